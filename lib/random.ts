import { randomFillSync } from "node:crypto";

/**
 * A PRNG for id generators (`ulid`'s factories): fractions in [0, 1) from the system's CSPRNG,
 * read 4 KiB at a time. ulid's own default asks the CSPRNG for one byte per character — sixteen
 * calls per id — which was the single largest cost of a SubmitTask in the scheduler's profile.
 */
export function pooledRandom(poolBytes = 4096): () => number {
  const pool = Buffer.allocUnsafe(poolBytes);
  let next = poolBytes;
  return () => {
    if (next >= poolBytes) {
      randomFillSync(pool);
      next = 0;
    }
    return (pool[next++] as number) / 256;
  };
}
