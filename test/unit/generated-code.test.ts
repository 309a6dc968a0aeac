import { execFile } from "node:child_process";
import { mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";

const run = promisify(execFile);
const root = join(import.meta.dirname, "../..");

async function files(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await files(p)));
    else out.push(p);
  }
  return out.sort();
}

describe("gen/", () => {
  it("is exactly what buf generates from proto/", async () => {
    const tmp = await mkdtemp(join(tmpdir(), "taskmesh-gen-"));
    try {
      await run(join(root, "node_modules/.bin/buf"), ["generate", "-o", tmp], { cwd: root, timeout: 60_000 });
      const fresh = await files(join(tmp, "gen"));
      const committed = await files(join(root, "gen"));
      expect(fresh.map((f) => relative(join(tmp, "gen"), f))).toEqual(committed.map((f) => relative(join(root, "gen"), f)));
      for (const f of fresh) {
        const rel = relative(join(tmp, "gen"), f);
        expect(await readFile(f, "utf8"), rel).toBe(await readFile(join(root, "gen", rel), "utf8"));
      }
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  }, 60_000);
});
