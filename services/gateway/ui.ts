import { createReadStream, type Stats } from "node:fs";
import { realpath, stat } from "node:fs/promises";
import type * as http from "node:http";
import { basename, extname, join, posix, resolve, sep } from "node:path";
import type { Logger } from "../../lib/logger.js";
import type { HttpRequest, HttpResponse } from "../../lib/server.js";

/** Options for {@link createUiHandler}. */
export interface UiHandlerOptions {
  /** The built dashboard (`ui/dist`, written by `npm run build:ui`). */
  dir: string;
  /** URL path the dashboard is served under; `<prefix>` and `<prefix>/` serve `index.html`. @default "/ui" */
  prefix?: string;
  /** Logs unexpected file system errors (a missing file is not one). */
  logger?: Logger;
}

/** Content types by file extension; anything else is `application/octet-stream`. */
const CONTENT_TYPES: Readonly<Record<string, string>> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".map": "application/json",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".txt": "text/plain; charset=utf-8",
  ".woff2": "font/woff2",
};

/** Extensions worth sending gzip-compressed when the build left a `.gz` beside the file. */
const COMPRESSIBLE = new Set([".html", ".js", ".mjs", ".css", ".json", ".map", ".svg", ".txt"]);

/** Built assets carry a content hash in their name (`app-3F2K9QXA.js`, `.js.map`): cacheable forever. */
const HASHED = /-[A-Z0-9]{8}(\.[a-z0-9]+)+$/;

/**
 * The dashboard only talks to its own origin: the policy forbids every other source, so a
 * CDN script, an external font or a stray inline script cannot load.
 */
const SECURITY_HEADERS: Readonly<Record<string, string>> = {
  "content-security-policy":
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "x-frame-options": "DENY",
};

/**
 * A static file handler for the web dashboard, to run in front of the gateway's REST handler:
 * it claims every request whose path is `prefix` or under `prefix/` (returns true) and leaves
 * everything else alone (returns false).
 *
 * `prefix` and `prefix/` serve `index.html`; other paths map to files of `dir`. Paths that
 * leave `dir` (`..`, encoded slashes or backslashes, NUL, symlinks pointing out) are refused
 * with 400 or 404, directories and missing files get 404, methods other than GET and HEAD 405.
 * `index.html` is revalidated on every load (`no-cache`, ETag); hashed asset names are cached
 * for a year as immutable. A `.gz` sibling written by the build is sent to clients that accept
 * gzip.
 */
export function createUiHandler(opts: UiHandlerOptions): (req: HttpRequest, res: HttpResponse) => boolean {
  const prefix = (opts.prefix ?? "/ui").replace(/\/+$/, "");
  const root = resolve(opts.dir);
  // Resolved once the directory exists (it may be built after the gateway started).
  let realRoot: string | undefined;

  const serve = async (req: HttpRequest, res: HttpResponse, rest: string): Promise<void> => {
    if (req.method !== "GET" && req.method !== "HEAD") {
      send(res, 405, "method not allowed\n", { allow: "GET, HEAD" });
      return;
    }
    let rel: string;
    try {
      rel = decodeURIComponent(rest);
    } catch {
      send(res, 400, "malformed path\n");
      return;
    }
    if (rel.includes("\0") || rel.includes("\\")) {
      send(res, 400, "malformed path\n");
      return;
    }
    if (rel === "" || rel === "/") rel = "/index.html";
    // Any `..` segment is refused outright rather than normalised away.
    if (rel.split("/").some((s) => s === ".." || s === ".")) {
      send(res, 400, "path leaves the dashboard\n");
      return;
    }
    const file = join(root, posix.normalize(rel));
    if (file !== root && !file.startsWith(root + sep)) {
      send(res, 400, "path leaves the dashboard\n");
      return;
    }
    let info: Stats;
    let real: string;
    try {
      realRoot ??= await realpath(root);
      real = await realpath(file);
      info = await stat(real);
    } catch (err) {
      if (isNotFound(err)) {
        if (rel === "/index.html") send(res, 404, "the dashboard is not built: run npm run build:ui\n");
        else send(res, 404, "not found\n");
        return;
      }
      opts.logger?.error({ err, path: rel }, "dashboard file unreadable");
      send(res, 500, "internal error\n");
      return;
    }
    if (!real.startsWith(realRoot + sep) || !info.isFile()) {
      send(res, 404, "not found\n");
      return;
    }
    const ext = extname(real).toLowerCase();
    const etag = `W/"${info.size.toString(16)}-${Math.floor(info.mtimeMs).toString(16)}"`;
    const headers: Record<string, string> = {
      ...SECURITY_HEADERS,
      "content-type": CONTENT_TYPES[ext] ?? "application/octet-stream",
      "cache-control": HASHED.test(basename(real)) ? "public, max-age=31536000, immutable" : "no-cache",
      etag,
      "last-modified": info.mtime.toUTCString(),
    };
    if (COMPRESSIBLE.has(ext)) headers.vary = "accept-encoding";
    if (req.headers["if-none-match"] === etag) {
      const r = res as http.ServerResponse;
      r.writeHead(304, headers);
      r.end();
      return;
    }
    let body = real;
    let size = info.size;
    if (COMPRESSIBLE.has(ext) && acceptsGzip(req.headers["accept-encoding"])) {
      const gz = await stat(`${real}.gz`).catch(() => undefined);
      // A stale .gz (older than its file) is ignored.
      if (gz?.isFile() === true && gz.mtimeMs >= info.mtimeMs) {
        body = `${real}.gz`;
        size = gz.size;
        headers["content-encoding"] = "gzip";
      }
    }
    headers["content-length"] = String(size);
    // Both response types have these methods; only their overload lists differ.
    const r = res as http.ServerResponse;
    r.writeHead(200, headers);
    if (req.method === "HEAD") {
      r.end();
      return;
    }
    const stream = createReadStream(body);
    stream.on("error", (err) => {
      opts.logger?.error({ err, path: rel }, "dashboard file read failed");
      r.destroy(err);
    });
    res.once("close", () => stream.destroy());
    stream.pipe(r);
  };

  return (req, res) => {
    const path = (req.url ?? "/").split("?", 1)[0] ?? "/";
    if (path !== prefix && !path.startsWith(`${prefix}/`)) return false;
    serve(req, res, path.slice(prefix.length)).catch((err: unknown) => {
      opts.logger?.error({ err }, "dashboard request failed");
      if (!res.headersSent) send(res, 500, "internal error\n");
      else (res as http.ServerResponse).destroy();
    });
    return true;
  };
}

/** True for an `Accept-Encoding` that allows gzip (a `q=0` refuses it). */
function acceptsGzip(header: string | undefined): boolean {
  if (header === undefined) return false;
  return header.split(",").some((part) => {
    const [name, ...params] = part.trim().toLowerCase().split(";");
    if (name !== "gzip" && name !== "*") return false;
    const q = params.map((p) => p.trim()).find((p) => p.startsWith("q="));
    return q === undefined || Number(q.slice(2)) > 0;
  });
}

function isNotFound(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code === "ENOENT" || code === "ENOTDIR";
}

/** A short plain-text answer. */
function send(res: HttpResponse, status: number, text: string, extra: Record<string, string> = {}): void {
  const r = res as http.ServerResponse;
  r.writeHead(status, {
    ...SECURITY_HEADERS,
    "content-type": "text/plain; charset=utf-8",
    "content-length": String(Buffer.byteLength(text)),
    "cache-control": "no-store",
    ...extra,
  });
  r.end(res.req?.method === "HEAD" ? undefined : text);
}
