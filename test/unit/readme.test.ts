import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";

const root = join(import.meta.dirname, "../..");
const read = (path: string): string => readFileSync(join(root, path), "utf8");

/**
 * Every environment variable a settings schema reads: `env: "TASKMESH_…"` in the services' main.ts
 * and in lib/ (lib/settings.ts, and the settings lib/etcd.ts and lib/redis.ts export).
 */
function settingsEnvVars(): string[] {
  const files = [
    ...readdirSync(join(root, "lib"))
      .filter((f) => f.endsWith(".ts"))
      .map((f) => `lib/${f}`),
    ...readdirSync(join(root, "services")).map((s) => `services/${s}/main.ts`),
  ];
  const vars = new Set<string>();
  for (const f of files) {
    let text: string;
    try {
      text = read(f);
    } catch {
      continue;
    }
    for (const m of text.matchAll(/env: "([A-Z0-9_]+)"/g)) vars.add(m[1] as string);
  }
  return [...vars].sort();
}

describe("README", () => {
  it("documents every environment variable the services read", () => {
    const readme = read("README.md");
    const vars = settingsEnvVars();
    expect(vars.length).toBeGreaterThan(20);
    expect(vars.filter((v) => !readme.includes(`\`${v}\``))).toEqual([]);
  });

  it("documents the settings of npm start and the commands", () => {
    const readme = read("README.md");
    const mesh = read("scripts/mesh.ts");
    const used = [...mesh.matchAll(/(?:process\.env\.|setting\(")(TASKMESH_[A-Z0-9_]+)/g)].map((m) => m[1] as string);
    expect(used).toContain("TASKMESH_DATA_DIR");
    expect(used.filter((v) => !readme.includes(`\`${v}\``))).toEqual([]);
    expect(readme).toContain("npm start");
    expect(readme).toContain("npm test");
  });
});
