/** One finished task as the throughput and latency charts need it. */
export interface FinishedSample {
  id: string;
  /** When it finished (ms since the epoch, server clock). */
  finishedMs: number;
  /** Created → finished, ms. */
  latencyMs: number;
  /** Created → started, ms (undefined when it never started, e.g. cancelled while queued). */
  waitMs: number | undefined;
}

/** One bucket of {@link FinishedTracker.buckets}. */
export interface Bucket {
  /** Bucket start, ms since the epoch. */
  startMs: number;
  /** Tasks finished per second in the bucket. */
  perSecond: number;
  /** Median and 95th percentile latency of the bucket's tasks; null when none finished. */
  p50: number | null;
  p95: number | null;
}

/** Summary over a trailing window. */
export interface WindowSummary {
  finished: number;
  perSecond: number;
  p50: number | null;
  p95: number | null;
  waitP50: number | null;
}

/**
 * Keeps the tasks seen finishing within a trailing window, deduplicated by id, and turns them
 * into per-bucket throughput and latency. The dashboard feeds it from periodic ListTasks polls:
 * tasks already finished when the page opened count too, so the charts fill at once.
 */
export class FinishedTracker {
  private readonly byId = new Map<string, FinishedSample>();

  /**
   * @param windowMs how far back samples are kept. @default 300000 (5 minutes)
   */
  constructor(readonly windowMs = 300_000) {}

  /** Adds or refreshes samples; those older than the window (relative to `nowMs`) are dropped. */
  add(samples: Iterable<FinishedSample>, nowMs: number): void {
    for (const s of samples) {
      if (s.finishedMs > nowMs - this.windowMs) this.byId.set(s.id, s);
    }
    this.prune(nowMs);
  }

  /** Drops samples older than the window. */
  prune(nowMs: number): void {
    for (const [id, s] of this.byId) if (s.finishedMs <= nowMs - this.windowMs) this.byId.delete(id);
  }

  /** Number of samples kept. */
  get size(): number {
    return this.byId.size;
  }

  /** `count` buckets of `bucketMs` each, oldest first, the last one ending at `nowMs`. */
  buckets(nowMs: number, bucketMs: number, count: number): Bucket[] {
    const start = nowMs - bucketMs * count;
    const lat: number[][] = Array.from({ length: count }, () => []);
    for (const s of this.byId.values()) {
      const i = Math.floor((s.finishedMs - start) / bucketMs);
      // A sample a little in the future (clock skew) counts in the newest bucket.
      const at = Math.min(i, count - 1);
      if (at >= 0) lat[at]?.push(s.latencyMs);
    }
    return lat.map((l, i) => ({
      startMs: start + i * bucketMs,
      perSecond: l.length / (bucketMs / 1000),
      p50: quantile(l, 0.5),
      p95: quantile(l, 0.95),
    }));
  }

  /** Throughput and latency over the last `spanMs`. */
  summary(nowMs: number, spanMs: number): WindowSummary {
    const recent = [...this.byId.values()].filter((s) => s.finishedMs > nowMs - spanMs);
    const lat = recent.map((s) => s.latencyMs);
    const wait = recent.flatMap((s) => (s.waitMs === undefined ? [] : [s.waitMs]));
    return {
      finished: recent.length,
      perSecond: recent.length / (spanMs / 1000),
      p50: quantile(lat, 0.5),
      p95: quantile(lat, 0.95),
      waitP50: quantile(wait, 0.5),
    };
  }
}

/** The q-quantile (nearest rank) of the values, or null for none. */
export function quantile(values: readonly number[], q: number): number | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank] ?? null;
}

/** A fixed-length history of values sampled over time (queue depth, slots in use). */
export class Series {
  private readonly points: { atMs: number; value: number }[] = [];

  /** @param windowMs how far back points are kept. @default 300000 */
  constructor(readonly windowMs = 300_000) {}

  /** Records a value. */
  push(atMs: number, value: number): void {
    this.points.push({ atMs, value });
    while ((this.points[0]?.atMs ?? atMs) <= atMs - this.windowMs) this.points.shift();
  }

  /** The newest value, or undefined. */
  get last(): number | undefined {
    return this.points.at(-1)?.value;
  }

  /**
   * The values resampled into `count` buckets ending at `nowMs` (the newest value in each
   * bucket; null where no sample fell).
   */
  resample(nowMs: number, count: number): (number | null)[] {
    const bucketMs = this.windowMs / count;
    const start = nowMs - this.windowMs;
    const out: (number | null)[] = Array.from({ length: count }, () => null);
    for (const p of this.points) {
      const i = Math.min(count - 1, Math.floor((p.atMs - start) / bucketMs));
      if (i >= 0) out[i] = p.value;
    }
    return out;
  }
}
