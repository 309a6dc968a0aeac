import { pino, type Logger, type LoggerOptions } from "pino";

export type { Logger } from "pino";

/** Options for {@link createLogger}. */
export interface LoggerConfig {
  /** Minimum level. @default "info" */
  level?: string;
  /** Where lines go (a pino destination); stdout by default. */
  destination?: NodeJS.WritableStream;
}

/**
 * Creates the process's one logger: JSON lines with `service` on every line. Components take a
 * child (`log.child({ component: "dispatcher" })`); messages are constant, data goes in fields.
 */
export function createLogger(service: string, config: LoggerConfig = {}): Logger {
  const opts: LoggerOptions = {
    level: config.level ?? "info",
    base: { service, pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  return config.destination === undefined ? pino(opts) : pino(opts, config.destination);
}

/** A logger that drops everything: for unit tests of components that require one. */
export function silentLogger(): Logger {
  return pino({ level: "silent" });
}
