import { pino, type Logger, type LoggerOptions } from "pino";

export type { Logger } from "pino";

/** Options for {@link createLogger}. */
export interface LoggerConfig {
  /** Minimum level. @default "info" */
  level?: string;
  /** Where lines go (a pino destination); stdout by default. */
  destination?: NodeJS.WritableStream;
  /**
   * Fields added to every line (pino's `mixin`), computed when the line is written: main.ts
   * passes `traceMixin` (lib/tracing.ts) so each line carries the active span's `trace_id`.
   * @default none
   */
  mixin?: () => object;
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
    ...(config.mixin !== undefined ? { mixin: config.mixin } : {}),
  };
  return config.destination === undefined ? pino(opts) : pino(opts, config.destination);
}

/** A logger that drops everything: for unit tests of components that require one. */
export function silentLogger(): Logger {
  return pino({ level: "silent" });
}
