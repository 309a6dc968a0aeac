/** Options for {@link waitFor}. */
export interface WaitOptions {
  /** Give up after this long. @default 10000 */
  timeoutMs?: number;
  /** Re-check interval. @default 20 */
  intervalMs?: number;
  /** Shown in the error when the deadline passes. */
  what?: string;
}

/**
 * Polls `check` until it returns a value other than `undefined`/`false`, or throws when the
 * deadline passes. This is how tests wait for a condition: never a bare sleep.
 */
export async function waitFor<T>(
  check: () => T | undefined | false | Promise<T | undefined | false>,
  opts: WaitOptions = {},
): Promise<T> {
  const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
  let lastError: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${opts.what ?? "condition"}`, { cause: lastError });
    }
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 20));
  }
}
