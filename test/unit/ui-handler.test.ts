import * as http from "node:http";
import * as http2 from "node:http2";
import { mkdir, mkdtemp, rm, symlink, utimes, writeFile } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gunzipSync, gzipSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createUiHandler } from "../../services/gateway/ui.js";

/** A response read in full, body not decompressed. */
interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/** Sends a raw request: the path goes out exactly as given (fetch would normalise `..`). */
function request(port: number, path: string, opts: { method?: string; headers?: Record<string, string> } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port, path, method: opts.method ?? "GET", headers: opts.headers ?? {} }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end();
  });
}

const INDEX = "<!doctype html><title>dashboard</title>";
const SCRIPT = `console.log(${JSON.stringify("x".repeat(4000))});`;
const SECRET = "top secret: outside the dashboard";

describe("dashboard static handler", () => {
  let dir: string;
  let dist: string;
  let server: http.Server;
  let port: number;
  const fellThrough: string[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "taskmesh-ui-"));
    dist = join(dir, "dist");
    await mkdir(join(dist, "sub"), { recursive: true });
    await writeFile(join(dir, "secret.txt"), SECRET);
    await writeFile(join(dist, "index.html"), INDEX);
    await writeFile(join(dist, "app-ABCDEFGH.js"), SCRIPT);
    await writeFile(join(dist, "app-ABCDEFGH.js.gz"), gzipSync(SCRIPT));
    await writeFile(join(dist, "app-ABCDEFGH.js.map"), "{}");
    await writeFile(join(dist, "style.css"), "body{}");
    await writeFile(join(dist, "logo.svg"), "<svg xmlns='http://www.w3.org/2000/svg'/>");
    await writeFile(join(dist, "blob.bin"), Buffer.from([1, 2, 3]));
    await writeFile(join(dist, "sub", "page.json"), "{}");
    // A stale .gz (older than its file) must not be served.
    await writeFile(join(dist, "old.txt"), "new text");
    await writeFile(join(dist, "old.txt.gz"), gzipSync("old text"));
    const past = new Date(Date.now() - 60_000);
    await utimes(join(dist, "old.txt.gz"), past, past);
    await symlink(join(dir, "secret.txt"), join(dist, "escape.txt"));

    const ui = createUiHandler({ dir: dist, prefix: "/ui" });
    server = http.createServer((req, res) => {
      if (ui(req, res)) return;
      fellThrough.push(req.url ?? "");
      res.writeHead(404, { "content-type": "application/json" }).end('{"error":"rest"}');
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    port = (server.address() as AddressInfo).port;
  });

  afterAll(async () => {
    await new Promise<void>((r) => server.close(() => r()));
    await rm(dir, { recursive: true, force: true });
  });

  it("serves index.html at /ui and /ui/, revalidated on every load, with a strict content security policy", async () => {
    for (const path of ["/ui", "/ui/", "/ui/index.html", "/ui?x=1"]) {
      const r = await request(port, path);
      expect(r.status, path).toBe(200);
      expect(r.headers["content-type"]).toBe("text/html; charset=utf-8");
      expect(r.headers["cache-control"]).toBe("no-cache");
      expect(r.headers["x-content-type-options"]).toBe("nosniff");
      expect(r.headers["content-security-policy"]).toContain("default-src 'none'");
      expect(r.headers["content-security-policy"]).toContain("connect-src 'self'");
      expect(r.body.toString()).toBe(INDEX);
    }
  });

  it("sends each file with its content type; hashed names are cached as immutable", async () => {
    const cases: [string, string, string][] = [
      ["/ui/app-ABCDEFGH.js", "text/javascript; charset=utf-8", "public, max-age=31536000, immutable"],
      ["/ui/app-ABCDEFGH.js.map", "application/json", "public, max-age=31536000, immutable"],
      ["/ui/style.css", "text/css; charset=utf-8", "no-cache"],
      ["/ui/logo.svg", "image/svg+xml", "no-cache"],
      ["/ui/sub/page.json", "application/json", "no-cache"],
      ["/ui/blob.bin", "application/octet-stream", "no-cache"],
    ];
    for (const [path, type, cache] of cases) {
      const r = await request(port, path);
      expect(r.status, path).toBe(200);
      expect(r.headers["content-type"], path).toBe(type);
      expect(r.headers["cache-control"], path).toBe(cache);
    }
    expect((await request(port, "/ui/app-ABCDEFGH.js")).body.toString()).toBe(SCRIPT);
  });

  it("sends the build's .gz to clients that accept gzip, and the plain file to the others", async () => {
    const gz = await request(port, "/ui/app-ABCDEFGH.js", { headers: { "accept-encoding": "gzip, deflate, br" } });
    expect(gz.headers["content-encoding"]).toBe("gzip");
    expect(gz.headers.vary).toBe("accept-encoding");
    expect(Number(gz.headers["content-length"])).toBe(gz.body.length);
    expect(gunzipSync(gz.body).toString()).toBe(SCRIPT);
    const refused = await request(port, "/ui/app-ABCDEFGH.js", { headers: { "accept-encoding": "gzip;q=0" } });
    expect(refused.headers["content-encoding"]).toBeUndefined();
    expect(refused.body.toString()).toBe(SCRIPT);
    const stale = await request(port, "/ui/old.txt", { headers: { "accept-encoding": "gzip" } });
    expect(stale.headers["content-encoding"]).toBeUndefined();
    expect(stale.body.toString()).toBe("new text");
  });

  it("answers a matching If-None-Match with 304, and HEAD with headers only", async () => {
    const first = await request(port, "/ui/style.css");
    const etag = first.headers.etag;
    expect(etag).toMatch(/^W\/".+"$/);
    const again = await request(port, "/ui/style.css", { headers: { "if-none-match": String(etag) } });
    expect(again.status).toBe(304);
    expect(again.body.length).toBe(0);
    const head = await request(port, "/ui/style.css", { method: "HEAD" });
    expect(head.status).toBe(200);
    expect(head.headers["content-length"]).toBe("6");
    expect(head.body.length).toBe(0);
  });

  it("refuses methods other than GET and HEAD", async () => {
    const r = await request(port, "/ui/index.html", { method: "POST" });
    expect(r.status).toBe(405);
    expect(r.headers.allow).toBe("GET, HEAD");
  });

  it("never serves a file outside its folder, however the path is spelled", async () => {
    const attempts = [
      "/ui/../secret.txt",
      "/ui/sub/../../secret.txt",
      "/ui/%2e%2e/secret.txt",
      "/ui/..%2fsecret.txt",
      "/ui/%2e%2e%2fsecret.txt",
      "/ui/sub/%2e%2e%2f%2e%2e%2fsecret.txt",
      "/ui/..%5csecret.txt",
      "/ui/sub%5c..%5c..%5csecret.txt",
      "/ui/%00secret.txt",
      "/ui/%E0%A4%A", // malformed percent-encoding
      "/ui//etc/passwd",
      "/ui/escape.txt", // a symlink pointing out of the folder
    ];
    for (const path of attempts) {
      const r = await request(port, path);
      expect([400, 404], path).toContain(r.status);
      expect(r.body.toString(), path).not.toContain("secret");
      expect(r.body.toString(), path).not.toContain("root:");
    }
  });

  it("answers 404 for missing files and for directories", async () => {
    for (const path of ["/ui/nope.js", "/ui/sub", "/ui/sub/", "/ui/index.html/x"]) {
      const r = await request(port, path);
      expect(r.status, path).toBe(404);
      expect(r.headers["content-type"]).toBe("text/plain; charset=utf-8");
    }
  });

  it("leaves every path outside its prefix to the next handler", async () => {
    fellThrough.length = 0;
    for (const path of ["/", "/uix", "/v1/tasks", "/ui-old/index.html", "/healthz"]) {
      const r = await request(port, path);
      expect(r.status, path).toBe(404);
      expect(r.body.toString(), path).toBe('{"error":"rest"}');
    }
    expect(fellThrough).toEqual(["/", "/uix", "/v1/tasks", "/ui-old/index.html", "/healthz"]);
  });

  it("says the dashboard is not built when its folder is missing", async () => {
    const ui = createUiHandler({ dir: join(dir, "missing"), prefix: "/dash/" });
    const other = http.createServer((req, res) => {
      if (!ui(req, res)) res.writeHead(418).end();
    });
    await new Promise<void>((r) => other.listen(0, "127.0.0.1", r));
    try {
      const p = (other.address() as AddressInfo).port;
      const r = await request(p, "/dash");
      expect(r.status).toBe(404);
      expect(r.body.toString()).toContain("npm run build:ui");
      expect((await request(p, "/ui")).status).toBe(418);
    } finally {
      await new Promise<void>((r) => other.close(() => r()));
    }
  });

  it("serves HTTP/2 requests too (the gateway's port speaks both)", async () => {
    const ui = createUiHandler({ dir: dist });
    const h2 = http2.createServer((req, res) => {
      if (!ui(req, res)) res.writeHead(404).end();
    });
    await new Promise<void>((r) => h2.listen(0, "127.0.0.1", r));
    const client = http2.connect(`http://127.0.0.1:${(h2.address() as AddressInfo).port}`);
    try {
      const { status, type, body } = await new Promise<{ status: number; type: string; body: string }>((resolve, reject) => {
        const req = client.request({ ":path": "/ui/app-ABCDEFGH.js" });
        let status = 0;
        let type = "";
        const chunks: Buffer[] = [];
        req.on("response", (headers) => {
          status = Number(headers[":status"]);
          type = String(headers["content-type"]);
        });
        req.on("data", (c: Buffer) => chunks.push(c));
        req.on("end", () => resolve({ status, type, body: Buffer.concat(chunks).toString() }));
        req.on("error", reject);
        req.end();
      });
      expect(status).toBe(200);
      expect(type).toBe("text/javascript; charset=utf-8");
      expect(body).toBe(SCRIPT);
    } finally {
      client.close();
      await new Promise<void>((r) => h2.close(() => r()));
    }
  });
});
