import { describe, expect, it } from "vitest";
import { AsyncQueue } from "../../lib/async-queue.js";

async function collect<T>(q: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of q) out.push(x);
  return out;
}

describe("AsyncQueue", () => {
  it("delivers items pushed before and after the consumer waits, then ends", async () => {
    const q = new AsyncQueue<number>();
    q.push(1);
    const all = collect(q);
    q.push(2);
    await Promise.resolve();
    q.push(3);
    q.end();
    q.push(4);
    expect(await all).toEqual([1, 2, 3]);
  });

  it("throws the error it was ended with, after nothing else", async () => {
    const q = new AsyncQueue<number>();
    q.push(1);
    q.end(new Error("boom"));
    await expect(collect(q)).rejects.toThrow("boom");
  });
});
