/**
 * The gateway's edge under attack by clients without a key (and slow ones with one): many slow
 * connections, large bodies without a key, bodies sent slowly, idle connections. Each case first
 * does what an attacker would, then checks that normal requests are still answered and that the
 * gateway holds little of it (memory, file descriptors).
 */
import { readdirSync, readFileSync } from "node:fs";
import * as http2 from "node:http2";
import * as net from "node:net";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { uniquePrefix } from "../support/ids.js";
import { startMesh, type Mesh } from "../support/mesh.js";
import { waitFor } from "../support/wait.js";

/** Resident memory of a process, in MB. */
function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return Number(m?.[1] ?? 0) / 1024;
}

/** Open file descriptors of a process. */
function fds(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** A normal keyed REST call from another loopback address; its status and how long it took. */
function normalCall(port: number, key: string): Promise<{ status: number; ms: number }> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: "127.0.0.1", port, localAddress: "127.0.0.2" }, () => {
      s.write(`GET /v1/cluster/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${key}\r\nConnection: close\r\n\r\n`);
    });
    let buf = "";
    s.on("data", (b) => (buf += b.toString()));
    s.on("end", () => resolve({ status: Number(/^HTTP\/1\.1 (\d+)/.exec(buf)?.[1] ?? 0), ms: performance.now() - started }));
    s.on("error", reject);
    s.setTimeout(10_000, () => s.destroy(new Error("no answer in 10 s")));
  });
}

describe("the gateway's edge: bounded connections, time and memory for clients without a key", () => {
  let mesh: Mesh;
  let port: number;
  let pid: number;
  beforeAll(async () => {
    mesh = await startMesh({
      etcdEndpoint: inject("etcdEndpoint"),
      redisUrl: inject("redisUrl"),
      prefix: uniquePrefix("edge"),
      workers: 0,
      gatewayArgs: ["--headers-timeout-ms", "2000", "--request-timeout-ms", "3000", "--idle-timeout-ms", "2000"],
    });
    port = mesh.gateway.port;
    pid = mesh.gateway.child.pid ?? 0;
  });
  afterAll(async () => {
    await mesh?.close();
  });

  it("answers normal requests while 20,000 slow connections try to hold it open, and sheds them", async () => {
    const attempts = 20_000;
    const held = new Set<net.Socket>();
    let refused = 0;
    let opened = 0;
    // Open in waves (this process has 20,000 descriptors too), each connection sending one
    // header line and then a byte now and then, never the end of its headers.
    const trickle = setInterval(() => {
      for (const s of held) s.write("X");
    }, 500);
    try {
      for (let wave = 0; opened < attempts && wave < 200; wave++) {
        const batch = Math.min(500, attempts - opened);
        await Promise.all(
          Array.from(
            { length: batch },
            () =>
              new Promise<void>((resolve) => {
                const s = net.connect({ host: "127.0.0.1", port });
                opened++;
                s.on("connect", () => {
                  held.add(s);
                  s.write("GET /v1/cluster/status HTTP/1.1\r\nHost: x\r\nX-Slow: ");
                  resolve();
                });
                s.on("error", () => undefined);
                s.on("close", () => {
                  if (held.delete(s)) refused++;
                  resolve();
                });
              }),
          ),
        );
        // Let the gateway close what it refuses before the next wave.
        await waitFor(() => held.size <= 1100 || undefined, { timeoutMs: 5000, what: "refused connections closed" }).catch(() => undefined);
      }
      expect(opened).toBe(attempts);
      // It keeps at most its per-address limit of them (the last refusals may still be on their
      // way here), and its descriptors stay bounded.
      await waitFor(() => held.size <= 1000 || undefined, { timeoutMs: 5000, what: "the last refused connections closed" }).catch(() => undefined);
      expect(held.size).toBeLessThanOrEqual(1000);
      expect(fds(pid)).toBeLessThan(1300);
      // Normal clients (another address) are answered meanwhile, quickly.
      for (let i = 0; i < 5; i++) {
        const r = await normalCall(port, mesh.apiKey);
        expect(r.status).toBe(200);
        expect(r.ms).toBeLessThan(2000);
      }
      // Headers not done in 2 s: every slow connection is closed.
      await waitFor(() => held.size === 0, { timeoutMs: 10_000, what: "slow connections closed by the headers timeout" });
      process.stdout.write(`edge: ${attempts} slow connections: ${refused} closed (limit or timeout), gateway fds ${fds(pid)}\n`);
    } finally {
      clearInterval(trickle);
      for (const s of held) s.destroy();
    }
  }, 120_000);

  it("reads no body of a request without a key: 40 streams of 31 MiB pin almost nothing", async () => {
    const before = rssMb(pid);
    // The client may queue all it wants (its own session memory is not what is tested).
    const session = http2.connect(`http://127.0.0.1:${port}`, { maxSessionMemory: 4096 });
    session.on("error", () => undefined);
    const chunk = Buffer.alloc(64 * 1024, 1);
    const outcomes = await Promise.all(
      Array.from(
        { length: 40 },
        () =>
          new Promise<string>((resolve) => {
            const req = session.request({
              ":method": "POST",
              ":path": "/taskmesh.v1.TaskService/SubmitTask",
              "content-type": "application/grpc",
              te: "trailers",
            });
            // The answer comes in the response headers (trailers-only), while the body is still
            // being pushed: that is all this client waits for.
            req.on("response", (h) => {
              resolve(String(h["grpc-status"] ?? ""));
              req.destroy();
            });
            req.on("error", () => undefined);
            req.on("close", () => resolve(`closed ${req.rstCode ?? ""}`));
            // 31 MiB, as fast as flow control lets it go.
            let sent = 0;
            const pump = (): void => {
              while (sent < 31 * 16 && !req.destroyed) {
                sent++;
                if (!req.write(chunk)) return void req.once("drain", pump);
              }
              if (!req.destroyed) req.end();
            };
            pump();
          }),
      ),
    );
    session.close();
    expect(outcomes).toEqual(outcomes.map(() => "16")); // UNAUTHENTICATED, all of them
    const after = rssMb(pid);
    process.stdout.write(`edge: 40 keyless 31 MiB gRPC bodies: gateway RSS ${before.toFixed(0)} → ${after.toFixed(0)} MB\n`);
    expect(after - before).toBeLessThan(50);
    // HTTP/1 too (Connect JSON with a Content-Length of 31 MiB): refused, the connection closed, nothing read.
    const status = await new Promise<number>((resolve, reject) => {
      const s = net.connect({ host: "127.0.0.1", port }, () => {
        s.write(`POST /taskmesh.v1.TaskService/SubmitTask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${31 * 1024 * 1024}\r\n\r\n{`);
      });
      let buf = "";
      s.on("data", (b) => (buf += b.toString()));
      s.on("close", () => resolve(Number(/^HTTP\/1\.1 (\d+)/.exec(buf)?.[1] ?? 0)));
      s.on("error", reject);
    });
    expect(status).toBe(401);
    expect(rssMb(pid) - before).toBeLessThan(50);
  }, 60_000);

  it("resets a request whose body does not arrive in time, and closes idle HTTP/2 connections", async () => {
    const session = http2.connect(`http://127.0.0.1:${port}`);
    session.on("error", () => undefined);
    const settings = await new Promise<http2.Settings>((resolve) => session.once("remoteSettings", resolve));
    expect(settings.maxConcurrentStreams).toBe(256);
    const started = performance.now();
    const closed = await new Promise<{ rst: number; ms: number }>((resolve) => {
      const req = session.request({
        ":method": "POST",
        ":path": "/taskmesh.v1.TaskService/SubmitTask",
        "content-type": "application/grpc",
        te: "trailers",
        authorization: `Bearer ${mesh.apiKey}`,
      });
      req.on("error", () => undefined);
      req.write(Buffer.from([0, 0, 0, 0, 100])); // announces 100 bytes, never sends them
      req.on("close", () => resolve({ rst: req.rstCode ?? -1, ms: performance.now() - started }));
    });
    expect(closed.ms).toBeGreaterThan(2500);
    expect(closed.ms).toBeLessThan(6000);
    expect(closed.rst).toBe(http2.constants.NGHTTP2_CANCEL);
    // No stream for 2 s: the connection is closed.
    await waitFor(() => session.closed || session.destroyed, { timeoutMs: 8000, what: "the idle connection closed" });
    // HTTP/1: a body that does not come in time is 408.
    const status = await new Promise<number>((resolve, reject) => {
      const s = net.connect({ host: "127.0.0.1", port }, () => {
        s.write(`POST /v1/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${mesh.apiKey}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{`);
      });
      let buf = "";
      s.on("data", (b) => (buf += b.toString()));
      s.on("close", () => resolve(Number(/^HTTP\/1\.1 (\d+)/.exec(buf)?.[1] ?? 0)));
      s.on("error", reject);
    });
    expect(status).toBe(408);
  }, 30_000);
});
