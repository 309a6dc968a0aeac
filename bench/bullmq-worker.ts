/**
 * The BullMQ worker process of the side-by-side benchmark: one `Worker` with BullMQ's default
 * settings (lock 30 s, stalled check every 30 s, one stall allowed) and the bench task types:
 * `noop` does nothing, `sleep` waits `data.ms`, `stamp` returns `{ s }`, the wall-clock time at
 * which the processor started (sub-ms, comparable with the parent's clock).
 * Usage (by bench/bullmq-system.ts): node --import tsx bench/bullmq-worker.ts '<json config>'
 * with an IPC channel: it sends `{ type: "ready" }` once connected, then runs; on
 * `{ type: "close" }` or SIGTERM it closes the worker (finishing jobs in flight) and exits.
 */
import { setTimeout as delay } from "node:timers/promises";
import { Worker, type Job } from "bullmq";

/** The worker's settings, passed as one JSON argument. */
export interface BullmqWorkerConfig {
  host: string;
  port: number;
  queue: string;
  concurrency: number;
  name: string;
}

const cfg = JSON.parse(process.argv[2] ?? "{}") as BullmqWorkerConfig;

async function processor(job: Job<{ ms?: number }>): Promise<{ s: number } | undefined> {
  const s = performance.timeOrigin + performance.now();
  switch (job.name) {
    case "stamp":
      return { s };
    case "sleep":
      await delay(job.data.ms ?? 0);
      return undefined;
    default:
      return undefined;
  }
}

const worker = new Worker(cfg.queue, processor, {
  connection: { host: cfg.host, port: cfg.port, maxRetriesPerRequest: null },
  concurrency: cfg.concurrency,
  name: cfg.name,
  autorun: false,
});
worker.on("error", (err) => process.stderr.write(`bullmq worker ${cfg.name}: ${String(err)}\n`));

let closing: Promise<void> | undefined;
const close = (): Promise<void> =>
  (closing ??= worker.close().then(
    () => process.exit(0),
    (err: unknown) => {
      process.stderr.write(`bullmq worker ${cfg.name} close: ${String(err)}\n`);
      process.exit(1);
    },
  ));
process.on("SIGTERM", () => void close());
process.on("message", (m: { type?: string }) => {
  if (m.type === "close") void close();
});

await worker.waitUntilReady();
process.send?.({ type: "ready" });
void worker.run();
