import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { describe, expect, it } from "vitest";

const root = resolve(import.meta.dirname, "../..");

function sources(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...sources(p));
    else if (p.endsWith(".ts")) out.push(p);
  }
  return out;
}

/** Relative imports of every source file under lib/, services/ and cli/, resolved to files. */
function importGraph(): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  const files = ["lib", "services", "cli"].flatMap((d) => sources(join(root, d)));
  for (const file of files) {
    const text = readFileSync(file, "utf8");
    const deps: string[] = [];
    for (const m of text.matchAll(/(?:^|\n)\s*(?:import|export)\s[^;]*?from\s+"(\.{1,2}\/[^"]+)"/g)) {
      const spec = m[1] as string;
      deps.push(relative(root, resolve(dirname(file), spec.replace(/\.js$/, ".ts"))));
    }
    graph.set(relative(root, file), deps);
  }
  return graph;
}

describe("architecture", () => {
  const graph = importGraph();

  it("sees the imports it checks", () => {
    expect(graph.get("services/scheduler/scheduler.ts")).toContain("services/scheduler/dispatcher.ts");
    expect([...graph.values()].flat().length).toBeGreaterThan(200);
  });

  it("has no import cycles", () => {
    const state = new Map<string, "visiting" | "done">();
    const cycles: string[] = [];
    const visit = (f: string, path: string[]): void => {
      if (state.get(f) === "done") return;
      if (state.get(f) === "visiting") {
        cycles.push([...path.slice(path.indexOf(f)), f].join(" → "));
        return;
      }
      state.set(f, "visiting");
      for (const d of graph.get(f) ?? []) if (graph.has(d)) visit(d, [...path, f]);
      state.set(f, "done");
    };
    for (const f of graph.keys()) visit(f, []);
    expect(cycles).toEqual([]);
  });

  it("keeps imports going downwards: lib never imports a service, a service never another service", () => {
    const wrong: string[] = [];
    for (const [f, deps] of graph) {
      const own = f.startsWith("services/") ? f.split("/")[1] : undefined;
      for (const d of deps) {
        if (f.startsWith("lib/") && (d.startsWith("services/") || d.startsWith("cli/"))) wrong.push(`${f} → ${d}`);
        if (own !== undefined && d.startsWith("services/") && d.split("/")[1] !== own) wrong.push(`${f} → ${d}`);
        if (f.startsWith("cli/") && d.startsWith("services/")) wrong.push(`${f} → ${d}`);
      }
    }
    expect(wrong).toEqual([]);
  });

  it("reads the environment only in main.ts files and the settings schema", () => {
    const readers = [...graph.keys()].filter((f) => /process\.env\b/.test(readFileSync(join(root, f), "utf8")));
    expect(readers.filter((f) => !f.endsWith("/main.ts") && f !== "lib/settings.ts" && !f.startsWith("cli/"))).toEqual([]);
  });
});
