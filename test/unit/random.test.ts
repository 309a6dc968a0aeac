import { monotonicFactory } from "ulid";
import { describe, expect, it } from "vitest";
import { pooledRandom } from "../../lib/random.js";

describe("pooledRandom", () => {
  it("gives fractions in [0, 1) that cover ulid's 32 characters evenly, across pool refills", () => {
    const next = pooledRandom(64);
    const buckets = new Array<number>(32).fill(0);
    for (let i = 0; i < 64_000; i++) {
      const x = next();
      expect(x).toBeGreaterThanOrEqual(0);
      expect(x).toBeLessThan(1);
      buckets[Math.floor(x * 32)]!++;
    }
    // 2,000 expected per bucket; a fair source stays well within ±15%.
    for (const b of buckets) expect(Math.abs(b - 2000)).toBeLessThan(300);
  });

  it("makes ulids that are unique and sorted", () => {
    const id = monotonicFactory(pooledRandom());
    const ids = Array.from({ length: 10_000 }, () => id());
    expect(new Set(ids).size).toBe(ids.length);
    expect([...ids].sort()).toEqual(ids);
  });
});
