import { describe, expect, it } from "vitest";
import { hash32, Ring } from "../../services/scheduler/ring.js";

const TYPE = "noop";
const workers = (n: number, from = 0): string[] => Array.from({ length: n }, (_, i) => `worker-${from + i}`);
const keys = (n: number): string[] => Array.from({ length: n }, (_, i) => `01J9ZK3Q7M${String(i).padStart(8, "0")}`);

function ringOf(ids: string[], types: string[] = [TYPE], opts = {}): Ring {
  const r = new Ring(opts);
  for (const id of ids) r.add(id, types);
  return r;
}

function owners(r: Ring, ks: string[], type = TYPE): (string | undefined)[] {
  return ks.map((k) => r.owner(k, type));
}

/** Assigns keys one by one with pick(), counting load; checks the bound after every step. */
function assignBounded(r: Ring, ks: string[], epsilon: number): Map<string, number> {
  const load = new Map<string, number>();
  const members = [...r.members()];
  let total = 0;
  for (const k of ks) {
    const id = r.pick(k, TYPE, (w) => load.get(w) ?? 0, () => true);
    expect(id).toBeDefined();
    load.set(id as string, (load.get(id as string) ?? 0) + 1);
    total++;
    const bound = Math.ceil(((1 + epsilon) * total) / members.length);
    if ((load.get(id as string) as number) > bound) {
      throw new Error(`after ${total} tasks ${id} holds ${load.get(id as string)} > bound ${bound}`);
    }
  }
  return load;
}

describe("hash32", () => {
  it("is deterministic, seed-dependent and uses all 32 bits", () => {
    expect(hash32("worker-1")).toBe(hash32("worker-1"));
    expect(hash32("worker-1", 1)).not.toBe(hash32("worker-1", 2));
    expect(hash32("ab")).not.toBe(hash32("ba"));
    let max = 0;
    for (const k of keys(1000)) max = Math.max(max, hash32(k));
    expect(max).toBeGreaterThan(2 ** 31);
    expect(max).toBeLessThan(2 ** 32);
  });
});

describe("Ring", () => {
  it("spreads 100,000 keys over 10 workers within ±10% of the fair share", () => {
    const r = ringOf(workers(10));
    const counts = new Map<string, number>();
    for (const o of owners(r, keys(100_000))) counts.set(o as string, (counts.get(o as string) ?? 0) + 1);
    expect(counts.size).toBe(10);
    for (const [id, c] of counts) {
      expect(Math.abs(c - 10_000), `${id} owns ${c} keys`).toBeLessThanOrEqual(1_000);
    }
  });

  it("moves at most 1/11 + 2% of keys when an 11th worker joins, all of them to it", () => {
    const r = ringOf(workers(10));
    const ks = keys(100_000);
    const before = owners(r, ks);
    r.add("worker-10", [TYPE]);
    const after = owners(r, ks);
    let moved = 0;
    for (let i = 0; i < ks.length; i++) {
      if (before[i] === after[i]) continue;
      moved++;
      expect(after[i]).toBe("worker-10");
    }
    expect(moved / ks.length).toBeLessThanOrEqual(1 / 11 + 0.02);
    expect(moved).toBeGreaterThan(0);
  });

  it("moves only the removed worker's keys, and never to it", () => {
    const r = ringOf(workers(10));
    const ks = keys(20_000);
    const before = owners(r, ks);
    r.remove("worker-3");
    expect(r.has("worker-3")).toBe(false);
    expect(r.size).toBe(9);
    const after = owners(r, ks);
    for (let i = 0; i < ks.length; i++) {
      expect(after[i]).not.toBe("worker-3");
      if (before[i] !== "worker-3") expect(after[i]).toBe(before[i]);
    }
    r.remove("worker-3"); // no-op
    expect(r.size).toBe(9);
  });

  it("gives the same owners for the same members whatever the order of adds and removes", () => {
    const ids = workers(12);
    const a = ringOf(ids);
    const b = new Ring();
    for (const id of [...ids].reverse()) b.add(id, [TYPE]);
    b.add("worker-temp", [TYPE]);
    b.remove("worker-temp");
    const c = new Ring();
    for (const id of ids.filter((_, i) => i % 2 === 0)) c.add(id, [TYPE]);
    c.owner("warm", TYPE); // forces a rebuild between the two halves
    for (const id of ids.filter((_, i) => i % 2 === 1)) c.add(id, [TYPE]);
    const ks = keys(20_000);
    const expected = owners(a, ks);
    expect(owners(b, ks)).toEqual(expected);
    expect(owners(c, ks)).toEqual(expected);
  });

  it("matches a freshly built ring after any sequence of adds, removes and lookups", () => {
    let seed = 12345;
    const rand = (n: number): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed % n;
    };
    const r = new Ring({ vnodes: 64 });
    const live = new Set<string>();
    const ks = keys(500);
    for (let step = 0; step < 300; step++) {
      const id = `w${rand(30)}`;
      if (live.has(id) && rand(2) === 0) {
        r.remove(id);
        live.delete(id);
      } else {
        r.add(id, [TYPE]);
        live.add(id);
      }
      if (rand(3) === 0) r.owner(ks[step] as string, TYPE); // rebuild now and then
      if (step % 50 === 49) {
        const fresh = ringOf([...live].sort(), [TYPE], { vnodes: 64 });
        expect(owners(r, ks)).toEqual(owners(fresh, ks));
        expect(r.size).toBe(live.size);
      }
    }
  });

  it("never places a key on a member lacking its type", () => {
    const r = new Ring();
    r.add("gpu-1", ["render", TYPE]);
    r.add("gpu-2", ["render"]);
    r.add("cpu-1", [TYPE]);
    r.add("cpu-2", [TYPE, "http_request"]);
    const ks = keys(5_000);
    const seen = new Set<string | undefined>();
    for (const k of ks) {
      const o = r.owner(k, "render");
      seen.add(o);
      expect(["gpu-1", "gpu-2"]).toContain(o);
      expect(r.pick(k, "http_request", () => 0, () => true)).toBe("cpu-2");
    }
    expect(seen).toEqual(new Set(["gpu-1", "gpu-2"]));
    expect(r.owner("k", "unknown")).toBeUndefined();
    expect(r.pick("k", "unknown", () => 0, () => true)).toBeUndefined();
    expect(new Ring().owner("k", TYPE)).toBeUndefined();
  });

  it("follows a member's task types when it is re-added with new ones", () => {
    const r = ringOf(workers(3));
    r.add("worker-1", ["other"]);
    expect(r.size).toBe(3);
    expect(r.taskTypes("worker-1")).toEqual(new Set(["other"]));
    for (const k of keys(2_000)) expect(r.owner(k, TYPE)).not.toBe("worker-1");
    expect(r.owner("k", "other")).toBe("worker-1");
  });

  it("agrees with owner() while nobody is loaded", () => {
    const r = ringOf(workers(10));
    for (const k of keys(2_000)) expect(r.pick(k, TYPE, () => 0, () => true)).toBe(r.owner(k, TYPE));
  });

  it("never puts a worker above ceil((1+ε)·average) when assigning one by one", () => {
    const r = ringOf(workers(10));
    const load = assignBounded(r, keys(100_000), 0.25);
    expect([...load.values()].reduce((a, b) => a + b, 0)).toBe(100_000);
  });

  it("spreads a hot affinity key clockwise instead of overloading its owner", () => {
    const r = ringOf(workers(8), [TYPE], { epsilon: 0.1 });
    const hot = Array.from({ length: 800 }, () => "tenant-42");
    const load = assignBounded(r, hot, 0.1);
    expect(load.size).toBe(8);
    expect(Math.max(...load.values())).toBeLessThanOrEqual(Math.ceil((1.1 * 800) / 8));
  });

  it("skips members that cannot accept and returns undefined when none can", () => {
    const r = ringOf(workers(5));
    const k = "some-task";
    const first = r.owner(k, TYPE) as string;
    const full = new Set([first]);
    const second = r.pick(k, TYPE, () => 0, (id) => !full.has(id));
    expect(second).toBeDefined();
    expect(second).not.toBe(first);
    const calls = new Map<string, number>();
    const none = r.pick(k, TYPE, () => 0, (id) => {
      calls.set(id, (calls.get(id) ?? 0) + 1);
      return false;
    });
    expect(none).toBeUndefined();
    // every member considered exactly once
    expect([...calls.values()]).toEqual([1, 1, 1, 1, 1]);
  });

  it("rejects bad options", () => {
    expect(() => new Ring({ vnodes: 0 })).toThrow(RangeError);
    expect(() => new Ring({ epsilon: 0 })).toThrow(RangeError);
  });
});
