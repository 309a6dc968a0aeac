import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { link, mkdtemp, mkdir, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import {
  BUILTIN_TASK_TYPES,
  builtinHandlers,
  CancelledError,
  loadHandlers,
  TaskFailure,
  type BuiltinOptions,
  type JsonObject,
  type JsonValue,
  type TaskContext,
  type TaskHandler,
} from "../../services/worker/handlers.js";

interface FakeCtx extends TaskContext {
  readonly controller: AbortController;
  readonly progressed: { percent: number; message: string | undefined }[];
  readonly logged: string[];
}

function fakeCtx(tenant = ""): FakeCtx {
  const controller = new AbortController();
  const progressed: { percent: number; message: string | undefined }[] = [];
  const logged: string[] = [];
  return {
    taskId: "t1",
    attempt: 1,
    tenant,
    signal: controller.signal,
    controller,
    progressed,
    logged,
    progress: (percent, message) => progressed.push({ percent, message }),
    log: (line) => logged.push(line),
  };
}

/** A lookup that must not be called: proves no DNS traffic for IP literals. */
const noLookup = async (host: string): Promise<never> => {
  throw new Error(`unexpected DNS lookup of ${host}`);
};

function handlersWith(over: Partial<BuiltinOptions> = {}): Map<string, TaskHandler> {
  return builtinHandlers({
    filesRoot: over.filesRoot ?? "/nonexistent-taskmesh-root",
    httpAllowedHosts: over.httpAllowedHosts ?? (() => []),
    lookup: over.lookup ?? noLookup,
    slots: over.slots ?? (() => ({ slots: 4, used: 1 })),
  });
}

function handler(map: Map<string, TaskHandler>, type: string): TaskHandler {
  const h = map.get(type);
  if (h === undefined) throw new Error(`no ${type}`);
  return h;
}

async function failure(p: Promise<unknown>): Promise<TaskFailure> {
  try {
    await p;
  } catch (err) {
    if (err instanceof TaskFailure) return err;
    throw err;
  }
  throw new Error("expected a TaskFailure");
}

describe("builtinHandlers", () => {
  it("registers exactly the built-in task types", () => {
    expect([...handlersWith().keys()].sort()).toEqual([...BUILTIN_TASK_TYPES].sort());
  });
});

describe("data_processing", () => {
  const run = handler(handlersWith(), "data_processing");

  it("doubles every number of every item, deeply, and reports progress up to 100", async () => {
    const ctx = fakeCtx();
    const data: JsonValue[] = [
      { a: 1, b: "x", c: { d: 2.5, e: [3, "y", null] } },
      { a: -4, f: true },
      { g: 0 },
    ];
    const result = await run({ data }, ctx);
    expect(result).toEqual({
      processed_data: [
        { a: 2, b: "x", c: { d: 5, e: [6, "y", null] } },
        { a: -8, f: true },
        { g: 0 },
      ],
      items_processed: 3,
    });
    expect(ctx.progressed.map((p) => p.percent)).toEqual([33, 66, 100]);
  });

  it("reports 100 for an empty list", async () => {
    const ctx = fakeCtx();
    expect(await run({ data: [] }, ctx)).toEqual({ processed_data: [], items_processed: 0 });
    expect(ctx.progressed.at(-1)?.percent).toBe(100);
  });

  it("refuses a payload without an array of objects", async () => {
    for (const payload of [{}, { data: "x" }, { data: [1] }, { data: [{}], item_delay_ms: -1 }] as JsonObject[]) {
      const f = await failure(run(payload, fakeCtx()));
      expect(f.code).toBe("INVALID_PAYLOAD");
      expect(f.retryable).toBe(false);
    }
  });

  it("stops between items when its signal fires, with the signal's reason", async () => {
    const ctx = fakeCtx();
    const p = run({ data: [{ a: 1 }, { a: 2 }, { a: 3 }], item_delay_ms: 60_000 }, ctx);
    const reason = new CancelledError("user");
    ctx.controller.abort(reason);
    await expect(p).rejects.toBe(reason);
    expect(ctx.progressed).toEqual([]);
  });
});

describe("file_operation", () => {
  let base: string;
  let root: string;
  let outsideDir: string;
  let run: TaskHandler;

  beforeEach(async () => {
    base = await mkdtemp(join(tmpdir(), "taskmesh-files-"));
    root = join(base, "root");
    outsideDir = join(base, "outside");
    await mkdir(root);
    await mkdir(outsideDir);
    await writeFile(join(outsideDir, "secret.txt"), "top secret");
    run = handler(handlersWith({ filesRoot: root }), "file_operation");
  });

  afterEach(async () => {
    await rm(base, { recursive: true, force: true });
  });

  it("writes a file, creating parent directories, and reads it back", async () => {
    const w = await run({ operation: "write", path: "a/b/hello.txt", content: "héllo" }, fakeCtx());
    expect(w).toEqual({ written: 6 });
    expect(await readFile(join(root, "a/b/hello.txt"), "utf8")).toBe("héllo");
    const r = await run({ operation: "read", path: "a/b/hello.txt" }, fakeCtx());
    expect(r).toEqual({ content: "héllo", size: 6 });
  });

  it("overwrites an existing file completely", async () => {
    await writeFile(join(root, "f.txt"), "a long original text");
    await run({ operation: "write", path: "f.txt", content: "short" }, fakeCtx());
    expect(await readFile(join(root, "f.txt"), "utf8")).toBe("short");
  });

  it("refuses ../ escapes and absolute paths with INVALID_ARGUMENT, not retried", async () => {
    for (const path of ["../outside/secret.txt", "/etc/passwd", "a/../../outside/secret.txt"]) {
      for (const op of [
        { operation: "read", path },
        { operation: "write", path, content: "x" },
      ]) {
        const f = await failure(run(op, fakeCtx()));
        expect(f.code, `${op.operation} ${path}`).toBe("INVALID_ARGUMENT");
        expect(f.retryable).toBe(false);
      }
    }
    expect(await readFile(join(outsideDir, "secret.txt"), "utf8")).toBe("top secret");
  });

  it("keeps each tenant's files apart: its own root, no way into another's", async () => {
    await run({ operation: "write", path: "notes.txt", content: "acme's" }, fakeCtx("acme"));
    await run({ operation: "write", path: "notes.txt", content: "beta's" }, fakeCtx("beta"));
    expect(await run({ operation: "read", path: "notes.txt" }, fakeCtx("acme"))).toEqual({ content: "acme's", size: 6 });
    expect(await run({ operation: "read", path: "notes.txt" }, fakeCtx("beta"))).toEqual({ content: "beta's", size: 6 });
    expect(await readFile(join(root, "acme", "notes.txt"), "utf8")).toBe("acme's");
    // beta reaching for acme's file: outside beta's root.
    for (const path of ["../acme/notes.txt", "./../acme/notes.txt"]) {
      expect((await failure(run({ operation: "read", path }, fakeCtx("beta")))).code).toBe("INVALID_ARGUMENT");
      expect((await failure(run({ operation: "write", path, content: "x" }, fakeCtx("beta")))).code).toBe("INVALID_ARGUMENT");
    }
    expect(await readFile(join(root, "acme", "notes.txt"), "utf8")).toBe("acme's");
    // A tenant name that is no directory name of its own.
    expect((await failure(run({ operation: "read", path: "x" }, fakeCtx("..")))).code).toBe("INVALID_ARGUMENT");
  });

  it("refuses a hard link to a file outside the root, for read and write, changing nothing", async () => {
    await link(join(outsideDir, "secret.txt"), join(root, "hard.txt"));
    const r = await failure(run({ operation: "read", path: "hard.txt" }, fakeCtx()));
    expect(r.code).toBe("INVALID_ARGUMENT");
    expect(r.message).toMatch(/hard links/);
    const w = await failure(run({ operation: "write", path: "hard.txt", content: "pwned" }, fakeCtx()));
    expect(w.code).toBe("INVALID_ARGUMENT");
    expect(await readFile(join(outsideDir, "secret.txt"), "utf8")).toBe("top secret");
  });

  it("refuses a symlink inside the root that points outside, for read and write", async () => {
    await symlink(join(outsideDir, "secret.txt"), join(root, "link.txt"));
    const r = await failure(run({ operation: "read", path: "link.txt" }, fakeCtx()));
    expect(r.code).toBe("INVALID_ARGUMENT");
    const w = await failure(run({ operation: "write", path: "link.txt", content: "pwned" }, fakeCtx()));
    expect(w.code).toBe("INVALID_ARGUMENT");
    expect(await readFile(join(outsideDir, "secret.txt"), "utf8")).toBe("top secret");
  });

  it("refuses writes through a symlinked directory that points outside, creating nothing there", async () => {
    await symlink(outsideDir, join(root, "dir"));
    for (const path of ["dir/new.txt", "dir/sub/new.txt", "dir/secret.txt"]) {
      const f = await failure(run({ operation: "write", path, content: "pwned" }, fakeCtx()));
      expect(f.code, path).toBe("INVALID_ARGUMENT");
    }
    const r = await failure(run({ operation: "read", path: "dir/secret.txt" }, fakeCtx()));
    expect(r.code).toBe("INVALID_ARGUMENT");
    const { readdir } = await import("node:fs/promises");
    expect(await readdir(outsideDir)).toEqual(["secret.txt"]);
    expect(await readFile(join(outsideDir, "secret.txt"), "utf8")).toBe("top secret");
  });

  it("refuses a dangling symlink whose target would be created outside", async () => {
    await symlink(join(outsideDir, "created.txt"), join(root, "dangling.txt"));
    const f = await failure(run({ operation: "write", path: "dangling.txt", content: "x" }, fakeCtx()));
    expect(f.code).toBe("INVALID_ARGUMENT");
    const { readdir } = await import("node:fs/promises");
    expect(await readdir(outsideDir)).toEqual(["secret.txt"]);
  });

  it("follows symlinks that stay inside the root", async () => {
    await mkdir(join(root, "real"));
    await writeFile(join(root, "real/data.txt"), "inside");
    await symlink(join(root, "real"), join(root, "alias"));
    expect(await run({ operation: "read", path: "alias/data.txt" }, fakeCtx())).toEqual({ content: "inside", size: 6 });
    expect(await run({ operation: "write", path: "alias/new.txt", content: "ok" }, fakeCtx())).toEqual({ written: 2 });
    expect(await readFile(join(root, "real/new.txt"), "utf8")).toBe("ok");
  });

  it("reports a missing file as NOT_FOUND and a bad payload as INVALID_PAYLOAD", async () => {
    expect((await failure(run({ operation: "read", path: "nope.txt" }, fakeCtx()))).code).toBe("NOT_FOUND");
    expect((await failure(run({ operation: "delete", path: "x" }, fakeCtx()))).code).toBe("INVALID_PAYLOAD");
    expect((await failure(run({ operation: "write", path: "x" }, fakeCtx()))).code).toBe("INVALID_PAYLOAD");
    expect((await failure(run({ operation: "read" }, fakeCtx()))).code).toBe("INVALID_PAYLOAD");
  });

  it("refuses to read a directory", async () => {
    await mkdir(join(root, "d"));
    expect((await failure(run({ operation: "read", path: "d" }, fakeCtx()))).code).toBe("INVALID_ARGUMENT");
  });
});

describe("http_request", () => {
  let server: Server;
  let port: number;
  const seen: { method: string | undefined; url: string | undefined; host: string | undefined; body: string }[] = [];

  beforeAll(async () => {
    server = createServer((req, res) => {
      let body = "";
      req.setEncoding("utf8");
      req.on("data", (c: string) => (body += c));
      req.on("end", () => {
        seen.push({ method: req.method, url: req.url, host: req.headers.host, body });
        if (req.url === "/redirect") {
          res.writeHead(302, { location: "http://169.254.169.254/latest/meta-data/" });
          res.end();
        } else if (req.url === "/big") {
          res.writeHead(200, { "content-type": "text/plain" });
          res.end("x".repeat(2 * 1024 * 1024));
        } else if (req.url === "/hang") {
          // never answers
        } else {
          res.writeHead(201, { "content-type": "text/plain", "x-test": "yes" });
          res.end(`you sent ${req.method} ${body}`);
        }
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    port = (server.address() as AddressInfo).port;
  });

  afterAll(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  beforeEach(() => {
    seen.length = 0;
  });

  it.each([
    ["http://127.0.0.1/", "loopback"],
    ["http://[::1]/", "loopback"],
    ["http://10.1.2.3/", "private"],
    ["http://169.254.169.254/latest/meta-data/", "link-local"],
    ["http://0.0.0.0/", "unspecified"],
    ["http://[::ffff:127.0.0.1]/", "loopback"],
    ["http://2130706433/", "loopback"],
    ["http://100.64.1.1/", "cgnat"],
  ])("refuses %s (%s) with FORBIDDEN_TARGET, not retried", async (url, cls) => {
    const run = handler(handlersWith(), "http_request");
    const f = await failure(run({ method: "GET", url }, fakeCtx()));
    expect(f.code).toBe("FORBIDDEN_TARGET");
    expect(f.retryable).toBe(false);
    expect(f.message).toContain(cls);
  });

  it("refuses a host name that resolves to a private address, and one with any private address", async () => {
    const run = handler(
      handlersWith({
        lookup: async (host) =>
          host === "internal.example"
            ? [{ address: "10.0.0.5", family: 4 }]
            : [
                { address: "93.184.215.14", family: 4 },
                { address: "fd00::1", family: 6 },
              ],
      }),
      "http_request",
    );
    const a = await failure(run({ method: "GET", url: "http://internal.example/" }, fakeCtx()));
    expect(a.code).toBe("FORBIDDEN_TARGET");
    const b = await failure(run({ method: "GET", url: "https://mixed.example/" }, fakeCtx()));
    expect(b.code).toBe("FORBIDDEN_TARGET");
    expect(b.message).toContain("fd00::1");
  });

  it("refuses other schemes and malformed requests as INVALID_PAYLOAD", async () => {
    const run = handler(handlersWith(), "http_request");
    for (const payload of [
      { method: "GET", url: "file:///etc/passwd" },
      { method: "GET", url: "ftp://example.com/" },
      { method: "GET", url: "not a url" },
      { method: "GET SOMETHING", url: "http://example.com/" },
      { url: "http://example.com/" },
      { method: "GET", url: "http://example.com/", timeout_ms: "soon" },
    ] as JsonObject[]) {
      expect((await failure(run(payload, fakeCtx()))).code).toBe("INVALID_PAYLOAD");
    }
  });

  it("reaches a loopback server allowed by httpAllowedHosts and returns status, headers and body", async () => {
    const run = handler(handlersWith({ httpAllowedHosts: () => ["127.0.0.1"] }), "http_request");
    const r = (await run(
      { method: "post", url: `http://127.0.0.1:${port}/echo`, headers: { "x-a": "1" }, body: "ping" },
      fakeCtx(),
    )) as JsonObject;
    expect(r["status"]).toBe(201);
    expect(r["body"]).toBe("you sent POST ping");
    expect(r["truncated"]).toBe(false);
    expect((r["headers"] as JsonObject)["x-test"]).toBe("yes");
  });

  it("connects to the checked address of an allowed host name, keeping its Host header", async () => {
    const lookups: string[] = [];
    const run = handler(
      handlersWith({
        httpAllowedHosts: () => ["app.internal"],
        lookup: async (host) => {
          lookups.push(host);
          return [{ address: "127.0.0.1", family: 4 }];
        },
      }),
      "http_request",
    );
    const r = (await run({ method: "GET", url: `http://app.internal:${port}/x` }, fakeCtx())) as JsonObject;
    expect(r["status"]).toBe(201);
    expect(lookups).toEqual(["app.internal"]);
    expect(seen[0]?.host).toBe(`app.internal:${port}`);
  });

  it("allows an address listed in httpAllowedHosts whatever name resolves to it", async () => {
    const run = handler(
      handlersWith({
        httpAllowedHosts: () => ["127.0.0.1"],
        lookup: async () => [{ address: "127.0.0.1", family: 4 }],
      }),
      "http_request",
    );
    const r = (await run({ method: "GET", url: `http://local.test:${port}/` }, fakeCtx())) as JsonObject;
    expect(r["status"]).toBe(201);
  });

  it("does not follow redirects", async () => {
    const run = handler(handlersWith({ httpAllowedHosts: () => ["127.0.0.1"] }), "http_request");
    const r = (await run({ method: "GET", url: `http://127.0.0.1:${port}/redirect` }, fakeCtx())) as JsonObject;
    expect(r["status"]).toBe(302);
    expect((r["headers"] as JsonObject)["location"]).toBe("http://169.254.169.254/latest/meta-data/");
    expect(seen).toHaveLength(1);
  });

  it("cuts the response body at 1 MiB", async () => {
    const run = handler(handlersWith({ httpAllowedHosts: () => ["127.0.0.1"] }), "http_request");
    const r = (await run({ method: "GET", url: `http://127.0.0.1:${port}/big` }, fakeCtx())) as JsonObject;
    expect((r["body"] as string).length).toBe(1024 * 1024);
    expect(r["truncated"]).toBe(true);
  });

  it("gives up after timeout_ms with a retryable HTTP_TIMEOUT", async () => {
    const run = handler(handlersWith({ httpAllowedHosts: () => ["127.0.0.1"] }), "http_request");
    const f = await failure(run({ method: "GET", url: `http://127.0.0.1:${port}/hang`, timeout_ms: 100 }, fakeCtx()));
    expect(f.code).toBe("HTTP_TIMEOUT");
    expect(f.retryable).toBe(true);
  });

  it("aborts with the attempt's signal reason", async () => {
    const run = handler(handlersWith({ httpAllowedHosts: () => ["127.0.0.1"] }), "http_request");
    const ctx = fakeCtx();
    const p = run({ method: "GET", url: `http://127.0.0.1:${port}/hang` }, ctx);
    const reason = new TaskFailure("TIMEOUT", "deadline", true);
    setTimeout(() => ctx.controller.abort(reason), 50);
    await expect(p).rejects.toBe(reason);
  });

  it("reports a refused connection as a retryable HTTP_ERROR", async () => {
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
    const deadPort = (closed.address() as AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const run = handler(handlersWith({ httpAllowedHosts: () => ["127.0.0.1"] }), "http_request");
    const f = await failure(run({ method: "GET", url: `http://127.0.0.1:${deadPort}/` }, fakeCtx()));
    expect(f.code).toBe("HTTP_ERROR");
    expect(f.retryable).toBe(true);
  });
});

describe("health_check", () => {
  it("reports cpu, memory, load, slots and identity", async () => {
    const run = handler(handlersWith({ slots: () => ({ slots: 8, used: 3 }) }), "health_check");
    const r = (await run({}, fakeCtx())) as JsonObject;
    expect(r).toMatchObject({ slots: 8, slots_used: 3, pid: process.pid });
    expect(Object.keys(r["cpu"] as JsonObject)).toEqual(expect.arrayContaining(["user", "system"]));
    expect(Object.keys(r["memory"] as JsonObject)).toEqual(expect.arrayContaining(["rss", "heapUsed", "total", "free"]));
    expect(r["load_average"]).toHaveLength(3);
    expect(typeof r["hostname"]).toBe("string");
    expect(typeof r["uptime_s"]).toBe("number");
    // A result must survive JSON (it becomes a protobuf Struct).
    expect(JSON.parse(JSON.stringify(r))).toEqual(r);
  });
});

describe("noop, sleep, fail", () => {
  const map = handlersWith();

  it("noop returns {}", async () => {
    expect(await handler(map, "noop")({}, fakeCtx())).toEqual({});
  });

  it("sleep waits and returns, and aborts at once with the signal's reason", async () => {
    expect(await handler(map, "sleep")({ ms: 5 }, fakeCtx())).toEqual({ slept_ms: 5 });
    const ctx = fakeCtx();
    const p = handler(map, "sleep")({ ms: 60_000 }, ctx);
    const reason = new CancelledError("stop");
    ctx.controller.abort(reason);
    await expect(p).rejects.toBe(reason);
    expect((await failure(handler(map, "sleep")({ ms: "x" }, fakeCtx()))).code).toBe("INVALID_PAYLOAD");
  });

  it("fail throws HANDLER_ERROR with the message, not retryable unless asked", async () => {
    const a = await failure(handler(map, "fail")({ message: "boom" }, fakeCtx()));
    expect([a.code, a.message, a.retryable]).toEqual(["HANDLER_ERROR", "boom", false]);
    const b = await failure(handler(map, "fail")({ message: "again", retryable: true }, fakeCtx()));
    expect(b.retryable).toBe(true);
  });
});

describe("loadHandlers", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "taskmesh-handlers-"));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("loads the exported functions of a TypeScript module, keyed by export name", async () => {
    const handlers = await loadHandlers("test/fixtures/handlers/example.ts");
    expect([...handlers.keys()].sort()).toEqual(["greet", "slow_echo"]);
    const ctx = fakeCtx();
    expect(await handler(handlers, "greet")({ name: "Ada" }, ctx)).toEqual({ greeting: "Hello, Ada!" });
    expect(ctx.logged).toEqual(["greeting Ada"]);
    const ctx2 = fakeCtx();
    expect(await handler(handlers, "slow_echo")({ value: 42, steps: 2, step_ms: 1 }, ctx2)).toEqual({ echo: 42 });
    expect(ctx2.progressed.map((p) => p.percent)).toEqual([50, 100]);
  });

  it("maps a default export object's keys to handlers", async () => {
    const file = join(dir, "default-object.mjs");
    await writeFile(file, "export default { shout: async (p) => ({ s: String(p.text).toUpperCase() }) };\n");
    const handlers = await loadHandlers(file);
    expect([...handlers.keys()]).toEqual(["shout"]);
    expect(await handler(handlers, "shout")({ text: "hi" }, fakeCtx())).toEqual({ s: "HI" });
  });

  it("refuses names that clash with built-ins, and modules without handlers", async () => {
    const clash = join(dir, "clash.mjs");
    await writeFile(clash, "export async function sleep() { return {}; }\n");
    await expect(loadHandlers(clash)).rejects.toThrow(/clashes with a built-in/);
    const clashDefault = join(dir, "clash-default.mjs");
    await writeFile(clashDefault, "export default { http_request: async () => ({}) };\n");
    await expect(loadHandlers(clashDefault)).rejects.toThrow(/clashes with a built-in/);
    const empty = join(dir, "empty.mjs");
    await writeFile(empty, "export const x = 1;\n");
    await expect(loadHandlers(empty)).rejects.toThrow(/no handlers/);
    const notFn = join(dir, "not-fn.mjs");
    await writeFile(notFn, "export default { a: 1 };\n");
    await expect(loadHandlers(notFn)).rejects.toThrow(/not a function/);
  });
});
