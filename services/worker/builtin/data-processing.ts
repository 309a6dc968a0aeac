import {
  abortableDelay,
  invalidPayload,
  isJsonObject,
  optionalNonNegative,
  type JsonObject,
  type JsonValue,
  type TaskContext,
  type TaskHandler,
} from "../task-api.js";

/** Longest wait allowed between items: one hour. */
const MAX_ITEM_DELAY_MS = 3_600_000;

/**
 * Doubles every number in a JSON value, at any depth (nested objects and arrays included);
 * strings, booleans and nulls are kept as they are.
 */
export function doubleNumbers(v: JsonValue): JsonValue {
  if (typeof v === "number") return v * 2;
  if (Array.isArray(v)) return v.map(doubleNumbers);
  if (isJsonObject(v)) {
    const out: JsonObject = {};
    for (const [k, x] of Object.entries(v)) out[k] = doubleNumbers(x);
    return out;
  }
  return v;
}

/**
 * `data_processing` `{ data: object[], item_delay_ms? }` → `{ processed_data, items_processed }`.
 * Every number in each item is doubled, deeply (see {@link doubleNumbers}). Progress is reported
 * after each item (the last report is 100); `item_delay_ms` is waited before each item and the
 * attempt's signal is honoured between items.
 */
export const dataProcessing: TaskHandler = async (payload: JsonObject, ctx: TaskContext) => {
  const data = payload["data"];
  if (!Array.isArray(data)) throw invalidPayload("data: must be an array of objects");
  data.forEach((item, i) => {
    if (!isJsonObject(item)) throw invalidPayload(`data[${i}]: must be an object`);
  });
  const delayMs = optionalNonNegative(payload, "item_delay_ms", 0, MAX_ITEM_DELAY_MS);

  const processed: JsonValue[] = [];
  const n = data.length;
  for (let i = 0; i < n; i++) {
    ctx.signal.throwIfAborted();
    if (delayMs > 0) await abortableDelay(delayMs, ctx.signal);
    processed.push(doubleNumbers(data[i] ?? null));
    // floor keeps every report but the last below 100.
    ctx.progress(Math.floor(((i + 1) * 100) / n), `processed ${i + 1}/${n}`);
  }
  if (n === 0) ctx.progress(100, "nothing to process");
  return { processed_data: processed, items_processed: n };
};
