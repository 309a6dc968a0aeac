import type { Logger } from "pino";

/** The states every long-lived component goes through. */
export type ComponentState = "starting" | "running" | "draining" | "stopped";

/** One step of a shutdown, run in the order added. */
export interface ShutdownStep {
  name: string;
  run: () => Promise<void> | void;
}

/**
 * Ordered graceful shutdown: stop taking work, drain in-flight work, release leases, close
 * clients. Steps run one after the other; a failing step is logged and the rest still run.
 * `shutdown()` may be called many times: it runs once and every call awaits the same run.
 */
export class Shutdown {
  private readonly steps: ShutdownStep[] = [];
  private running: Promise<void> | undefined;

  constructor(private readonly log: Logger) {}

  /** Adds a step after those already added. */
  add(name: string, run: () => Promise<void> | void): this {
    this.steps.push({ name, run });
    return this;
  }

  /** Runs every step in order, once. */
  shutdown(): Promise<void> {
    this.running ??= (async () => {
      for (const step of this.steps) {
        try {
          await step.run();
        } catch (err) {
          this.log.error({ err, step: step.name }, "shutdown step failed");
        }
      }
    })();
    return this.running;
  }

  /**
   * Wires SIGINT and SIGTERM to `shutdown()` and exits when it completes (exit code 0), or after
   * `hardLimitMs` whatever happens (exit code 1). A second signal exits at once.
   */
  onSignals(hardLimitMs: number): void {
    let signalled = false;
    const handler = (signal: NodeJS.Signals): void => {
      if (signalled) {
        this.log.warn({ signal }, "second signal, exiting now");
        process.exit(1);
      }
      signalled = true;
      this.log.info({ signal }, "shutting down");
      setTimeout(() => {
        this.log.error({ hardLimitMs }, "shutdown took too long, exiting");
        process.exit(1);
      }, hardLimitMs).unref();
      void this.shutdown().then(() => process.exit(0));
    };
    process.on("SIGINT", handler);
    process.on("SIGTERM", handler);
  }
}

/** Resolves after `ms`, or rejects when `signal` aborts. For backoff waits, never for synchronisation. */
export function delay(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted === true) {
      reject(signal.reason);
      return;
    }
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    t.unref();
    const onAbort = (): void => {
      clearTimeout(t);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
