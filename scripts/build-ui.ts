import { gzipSync } from "node:zlib";
import { mkdir, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { basename, join, relative, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import * as esbuild from "esbuild";

/** Options for {@link buildUi}. */
export interface BuildUiOptions {
  /** The repository root. @default the parent of this script's folder */
  root?: string;
  /** Where the built files go. @default `<root>/ui/dist` */
  outDir?: string;
  /** Minify the bundle. @default true */
  minify?: boolean;
}

/** What {@link buildUi} wrote. */
export interface BuildUiResult {
  outDir: string;
  /** File names written into `outDir` (no `.gz` siblings). */
  files: string[];
  /** The hashed names `index.html` refers to. */
  script: string;
  style: string;
}

/** The URLs `ui/index.html` refers to, replaced by the hashed names of the build. */
const SCRIPT_URL = "/ui/app.js";
const STYLE_URL = "/ui/style.css";
/** Text assets at least this big get a `.gz` sibling, which the gateway sends to gzip clients. */
const GZIP_MIN_BYTES = 1024;

/**
 * Bundles the dashboard (`ui/src/main.ts` and `ui/style.css`) with esbuild into `ui/dist`:
 * content-hashed `app-<hash>.js` (+ source map) and `style-<hash>.css`, their `.gz` siblings,
 * and `index.html` pointing at them. `index.html` is replaced last and atomically, then files
 * of earlier builds are removed, so a gateway serving the folder never sees a half-written build.
 */
export async function buildUi(opts: BuildUiOptions = {}): Promise<BuildUiResult> {
  const root = resolve(opts.root ?? join(import.meta.dirname, ".."));
  const outDir = resolve(opts.outDir ?? join(root, "ui", "dist"));
  const result = await esbuild.build({
    absWorkingDir: root,
    entryPoints: { app: "ui/src/main.ts", style: "ui/style.css" },
    bundle: true,
    format: "esm",
    platform: "browser",
    target: ["es2022", "chrome109", "firefox115", "safari16"],
    minify: opts.minify ?? true,
    sourcemap: "linked",
    entryNames: "[name]-[hash]",
    outdir: outDir,
    write: false,
    metafile: true,
    legalComments: "none",
    charset: "utf8",
    logLevel: "silent",
    tsconfig: "ui/tsconfig.json",
  });
  const names = new Map<string, string>();
  for (const [out, meta] of Object.entries(result.metafile.outputs)) {
    if (meta.entryPoint !== undefined) names.set(meta.entryPoint, basename(out));
  }
  const script = names.get("ui/src/main.ts");
  const style = names.get("ui/style.css");
  if (script === undefined || style === undefined) throw new Error("esbuild produced no app or style bundle");

  await mkdir(outDir, { recursive: true });
  const written = new Set<string>();
  for (const file of result.outputFiles) {
    const name = relative(outDir, file.path);
    await writeFile(join(outDir, name), file.contents);
    written.add(name);
    if (file.contents.byteLength >= GZIP_MIN_BYTES) {
      await writeFile(join(outDir, `${name}.gz`), gzipSync(file.contents, { level: 9 }));
      written.add(`${name}.gz`);
    }
  }
  const template = await readFile(join(root, "ui", "index.html"), "utf8");
  if (!template.includes(SCRIPT_URL) || !template.includes(STYLE_URL)) {
    throw new Error(`ui/index.html must refer to ${SCRIPT_URL} and ${STYLE_URL}`);
  }
  const html = template.replace(SCRIPT_URL, `/ui/${script}`).replace(STYLE_URL, `/ui/${style}`);
  const tmp = join(outDir, `.index.html.${process.pid}.tmp`);
  await writeFile(tmp, html);
  await rename(tmp, join(outDir, "index.html"));
  written.add("index.html");
  for (const name of await readdir(outDir)) {
    if (!written.has(name)) await rm(join(outDir, name), { recursive: true, force: true });
  }
  return { outDir, files: [...written].filter((n) => !n.endsWith(".gz")).sort(), script, style };
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  try {
    const r = await buildUi();
    process.stdout.write(`dashboard built into ${relative(process.cwd(), r.outDir) || "."}: ${r.files.join(", ")}\n`);
  } catch (err) {
    process.stderr.write(`dashboard build failed: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  }
}
