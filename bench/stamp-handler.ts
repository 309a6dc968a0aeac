/**
 * Bench-only task type for taskmesh workers (`--handlers bench/stamp-handler.ts`): `stamp`
 * returns the wall-clock time at which the handler started, with sub-millisecond resolution,
 * so submit→start is measured in the worker as it is for BullMQ (taskmesh's own `started_at`
 * is the scheduler's claim time, in whole milliseconds).
 */
import type { JsonObject } from "../services/worker/handlers.js";

/** `stamp` `{}` → `{ s }`: `performance.timeOrigin + performance.now()` at the handler's start. */
export async function stamp(): Promise<JsonObject> {
  return { s: performance.timeOrigin + performance.now() };
}
