import { mkdtemp, rm } from "node:fs/promises";
import { connect as netConnect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterEach, describe, expect, inject, it } from "vitest";
import { RetryInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { TaskStatus, type Task } from "../../gen/taskmesh/v1/task_pb.js";
import { TaskService } from "../../gen/taskmesh/v1/task_service_pb.js";
import { startRedis, type Backend } from "../support/backends.js";
import { gatewayClients } from "../support/clients.js";
import { uniquePrefix } from "../support/ids.js";
import { startMesh, startService, type Mesh, type ServiceProcess } from "../support/mesh.js";
import { freePort } from "../support/ports.js";
import { startTcpProxy } from "../support/tcp-proxy.js";
import { waitFor } from "../support/wait.js";

/** The gateway's clients in its three protocols: gRPC (the fast byte-forwarding path), Connect JSON over HTTP/1.1, REST. */
function clients(mesh: Mesh) {
  const auth: Interceptor = (next) => (req) => {
    req.header.set("authorization", `Bearer ${mesh.apiKey}`);
    return next(req);
  };
  const grpc = gatewayClients(mesh.gateway.address, mesh.apiKey);
  const connect = createClient(
    TaskService,
    createConnectTransport({ baseUrl: `http://${mesh.gateway.address}`, httpVersion: "1.1", interceptors: [auth] }),
  );
  const rest = (path: string, init: RequestInit = {}) =>
    fetch(`http://${mesh.gateway.address}${path}`, {
      ...init,
      headers: { authorization: `Bearer ${mesh.apiKey}`, "content-type": "application/json", ...(init.headers ?? {}) },
    });
  return { grpc: grpc.tasks, cluster: grpc.cluster, connect, rest };
}

async function failure(p: Promise<unknown>): Promise<ConnectError | undefined> {
  try {
    await p;
    return undefined;
  } catch (err) {
    return ConnectError.from(err);
  }
}

/** The gateway's breaker gauge: replicas whose breaker is not closed. */
async function openBreakers(mesh: Mesh): Promise<number> {
  const text = await (await fetch(`http://${mesh.gateway.address}/metrics`)).text();
  let open = 0;
  for (const line of text.split("\n")) if (line.startsWith("taskmesh_gateway_breaker_open{") && line.endsWith(" 1")) open++;
  return open;
}

/** Restarts a killed service process with the same flags on the same port. */
function restart(p: ServiceProcess): Promise<ServiceProcess> {
  const args = p.child.spawnargs.slice(p.child.spawnargs.indexOf("--port") + 2);
  return startService("scheduler", `${p.name}-again`, args, { port: p.port });
}

/** Sends an HTTP/1.1 request and closes the connection at once, without waiting for anything. */
function abandonedGet(address: string, path: string, key: string): Promise<void> {
  const [host, port] = address.split(":") as [string, string];
  return new Promise((resolve) => {
    const s = netConnect({ host, port: Number(port) }, () => {
      s.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${key}\r\n\r\n`, () => {
        s.destroy();
        resolve();
      });
    });
    s.on("error", () => resolve());
  });
}

describe("gateway faults: breakers recover, writes move, errors are unambiguous", () => {
  let mesh: Mesh | undefined;
  let redis: Backend | undefined;
  const cleanup: (() => Promise<unknown>)[] = [];
  afterEach(async (ctx) => {
    // A failure's story is in the processes' logs.
    if (ctx.task.result?.state === "fail" && mesh !== undefined) {
      for (const p of [mesh.gateway, ...mesh.schedulers]) process.stdout.write(`--- ${p.name}\n${p.output().slice(-6000)}\n`);
    }
    for (const f of cleanup.splice(0).reverse()) await f().catch(() => undefined);
    await mesh?.close();
    await redis?.stop();
    mesh = undefined;
    redis = undefined;
  });

  const start = (prefix: string, schedulers = 1, extra: Partial<Parameters<typeof startMesh>[0]> = {}) =>
    startMesh({
      etcdEndpoint: inject("etcdEndpoint"),
      redisUrl: inject("redisUrl"),
      prefix: uniquePrefix(prefix),
      workers: 0,
      schedulers,
      ...extra,
    });

  it("keeps serving everyone after abandoned REST reads, cancelled calls and 1 ms deadlines (one scheduler)", async () => {
    mesh = await start("abandon");
    const c = clients(mesh);
    const t = await c.grpc.submitTask({ type: "noop" });
    for (let i = 0; i < 10; i++) {
      await abandonedGet(mesh.gateway.address, `/v1/tasks/${t.id}`, mesh.apiKey);
      const tiny = await failure(c.grpc.getTask({ taskId: t.id }, { timeoutMs: 1 }));
      if (tiny !== undefined) expect(tiny.code).toBe(Code.DeadlineExceeded);
      const tinyConnect = await failure(c.connect.getTask({ taskId: t.id }, { timeoutMs: 1 }));
      if (tinyConnect !== undefined) expect(tinyConnect.code).toBe(Code.DeadlineExceeded);
      const ac = new AbortController();
      const cancelled = c.grpc.getTask({ taskId: t.id }, { signal: ac.signal });
      ac.abort();
      expect((await failure(cancelled))?.code).toBe(Code.Canceled);
    }
    // No replica failure was counted: every protocol is served at once.
    expect((await c.grpc.getTask({ taskId: t.id })).id).toBe(t.id);
    expect((await c.connect.getTask({ taskId: t.id })).id).toBe(t.id);
    const rest = await c.rest(`/v1/tasks/${t.id}`);
    expect(rest.status).toBe(200);
    expect(await openBreakers(mesh)).toBe(0);
  });

  it("calls a scheduler killed and restarted at once on the same id and port within a second of it being healthy", async () => {
    mesh = await start("restart", 1, { schedulerArgs: ["--id", `sched-${Date.now()}`] });
    const c = clients(mesh);
    const t = await c.grpc.submitTask({ type: "noop" });
    const first = mesh.schedulers[0] as ServiceProcess;
    await first.kill();
    for (let i = 0; i < 5; i++) expect((await failure(c.grpc.getTask({ taskId: t.id })))?.code).toBe(Code.Unavailable);
    expect(await openBreakers(mesh)).toBe(1);
    const again = await restart(first);
    cleanup.push(() => again.stop());
    const healthy = Date.now();
    await waitFor(async () => (await c.grpc.getTask({ taskId: t.id })).id === t.id, { timeoutMs: 5000, intervalMs: 20 });
    const took = Date.now() - healthy;
    process.stdout.write(`restart on the same id: served ${took} ms after healthy\n`);
    expect(took).toBeLessThan(1000);
  });

  it("serves again within 2 s after 10 s of refused connections to the only scheduler", async () => {
    mesh = await start("refused", 0);
    // The scheduler registers the address of a proxy in front of it: the test can make that
    // address refuse connections (as a firewall rejecting them would) while it stays registered.
    const port = await freePort();
    const proxy = await startTcpProxy(`127.0.0.1:${port}`);
    cleanup.push(() => proxy.close());
    const cache = await mkdtemp(join(tmpdir(), "taskmesh-cache-"));
    cleanup.push(() => rm(cache, { recursive: true, force: true }));
    const only = await startService(
      "scheduler",
      "scheduler-proxied",
      [
        "--etcd", inject("etcdEndpoint"),
        "--etcd-root", mesh.etcdRoot,
        "--redis", inject("redisUrl"),
        "--redis-prefix", mesh.redisPrefix,
        "--advertise-address", proxy.address,
        "--config-cache", join(cache, "c.json"),
      ],
      { port },
    );
    cleanup.push(() => only.stop());
    const c = clients(mesh);
    const t = await waitFor(() => c.grpc.submitTask({ type: "noop" }), { what: "the scheduler reachable" });
    await proxy.refuse();
    const unblock = (): Promise<void> => proxy.heal();
    cleanup.push(unblock);
    const until = Date.now() + 10_000;
    let calls = 0;
    while (Date.now() < until && calls < 1000) {
      calls++;
      const t0 = Date.now();
      const err = await failure(c.grpc.getTask({ taskId: t.id }));
      expect(err?.code, String(err)).toBe(Code.Unavailable);
      expect(Date.now() - t0).toBeLessThan(1000);
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(await openBreakers(mesh)).toBe(1);
    await unblock();
    const back = Date.now();
    await waitFor(
      async () => {
        await c.grpc.getTask({ taskId: t.id });
        await c.connect.getTask({ taskId: t.id });
        return (await c.rest(`/v1/tasks/${t.id}`)).status === 200;
      },
      { timeoutMs: 10_000, intervalMs: 20 },
    );
    const took = Date.now() - back;
    process.stdout.write(`refused for 10 s (${calls} calls refused): served again ${took} ms after the network healed\n`);
    expect(took).toBeLessThan(2200);
  });

  it("moves submits away from a stopped scheduler: none fails, none is stored twice (gRPC, Connect, REST)", async () => {
    mesh = await start("sigstop", 2);
    const c = clients(mesh);
    // Stop the leader (it also takes writes like the other replica).
    const status = await waitFor(async () => {
      const s = await c.cluster.getClusterStatus({});
      return s.schedulers.length === 2 && s.schedulers.some((x) => x.leader) ? s : undefined;
    });
    const leader = status.schedulers.find((x) => x.leader);
    const stopped = mesh.schedulers.find((p) => p.address === leader?.address) as ServiceProcess;
    expect(stopped).toBeDefined();
    const failures: string[] = [];
    const submitted: string[] = [];
    let longest = 0;
    let stoppedAt = 0;
    const deadline = Date.now() + 7000;
    const submitVia = async (proto: "grpc" | "connect" | "rest" | "batch", req: string): Promise<void> => {
      const labels = { req };
      const t0 = Date.now();
      try {
        if (proto === "grpc") await c.grpc.submitTask({ type: "noop", labels });
        else if (proto === "connect") await c.connect.submitTask({ type: "noop", labels });
        else if (proto === "batch") {
          await c.grpc.submitTasks({ tasks: [0, 1, 2].map((i) => ({ type: "noop", labels: { req: `${req}.${i}` } })) });
        } else {
          const r = await c.rest("/v1/tasks", { method: "POST", body: JSON.stringify({ type: "noop", labels }) });
          if (r.status !== 200) throw new Error(`HTTP ${r.status}: ${await r.text()}`);
        }
        if (proto === "batch") submitted.push(`${req}.0`, `${req}.1`, `${req}.2`);
        else submitted.push(req);
      } catch (err) {
        failures.push(`${proto} ${req}: ${String(err)}`);
      }
      const took = Date.now() - t0;
      if (stoppedAt > 0 && t0 >= stoppedAt - 100) longest = Math.max(longest, took);
    };
    const loops = (["grpc", "connect", "rest", "batch"] as const).map(async (proto) => {
      for (let i = 0; Date.now() < deadline && i < 5000; i++) await submitVia(proto, `${proto}-${i}`);
    });
    await waitFor(() => submitted.length >= 40, { timeoutMs: 10_000 });
    stopped.child.kill("SIGSTOP");
    stoppedAt = Date.now();
    cleanup.push(async () => stopped.child.kill("SIGCONT"));
    try {
      await Promise.all(loops);
    } finally {
      stopped.child.kill("SIGCONT");
    }
    // The resumed replica answers requests it held (nobody waits for them any more): let it.
    await waitFor(async () => (await fetch(`http://${stopped.address}/healthz`)).status === 200, { timeoutMs: 10_000 });
    const tasks: Task[] = [];
    let pageToken = "";
    for (let page = 0; page < 100; page++) {
      const r = await c.grpc.listTasks({ pageSize: 1000, pageToken });
      tasks.push(...r.tasks);
      pageToken = r.nextPageToken;
      if (pageToken === "") break;
    }
    const perRequest = new Map<string, number>();
    for (const t of tasks) perRequest.set(t.labels.req ?? "", (perRequest.get(t.labels.req ?? "") ?? 0) + 1);
    const twice = [...perRequest].filter(([, n]) => n > 1);
    process.stdout.write(
      `SIGSTOP of the leader: ${submitted.length} submits, ${failures.length} failed, ${twice.length} stored twice, longest submit after the stop ${longest} ms\n`,
    );
    expect(failures).toEqual([]);
    expect(twice).toEqual([]);
    expect(submitted.filter((r) => perRequest.get(r) !== 1)).toEqual([]);
    expect(tasks.every((t) => t.status === TaskStatus.QUEUED)).toBe(true);
  });

  it("answers UNAVAILABLE with a retry hint on gRPC, Connect and REST while Redis is down, and counts no replica failure", async () => {
    redis = await startRedis();
    // With a rate limit, the gateway itself needs Redis too (its token buckets).
    mesh = await start("redisdown", 1, { redisUrl: redis.address, gatewayArgs: ["--rate-limit", "10000"] });
    const c = clients(mesh);
    const t = await c.grpc.submitTask({ type: "noop" });
    // Its shutdown would wait for Redis: killed at the end instead.
    cleanup.push(() => Promise.all(mesh?.schedulers.map((p) => p.kill()) ?? []));
    await redis.stop();
    for (let i = 0; i < 4; i++) {
      const g = await failure(c.grpc.getTask({ taskId: t.id }));
      expect(g?.code, String(g)).toBe(Code.Unavailable);
      expect(g?.findDetails(RetryInfoSchema).length).toBe(1);
      expect(Number(g?.metadata.get("retry-after"))).toBeGreaterThanOrEqual(1);
      const s = await failure(c.grpc.submitTask({ type: "noop" }));
      expect(s?.code, String(s)).toBe(Code.Unavailable);
      const k = await failure(c.connect.getTask({ taskId: t.id }));
      expect(k?.code, String(k)).toBe(Code.Unavailable);
      expect(Number(k?.metadata.get("retry-after"))).toBeGreaterThanOrEqual(1);
      const r = await c.rest(`/v1/tasks/${t.id}`);
      expect(r.status).toBe(503);
      expect(Number(r.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
      expect(((await r.json()) as { code: number }).code).toBe(Code.Unavailable);
    }
    expect(await openBreakers(mesh)).toBe(0);
  });

  it("answers DEADLINE_EXCEEDED (504) within the deadline when the only scheduler hangs (SIGSTOP)", async () => {
    mesh = await start("hung");
    const c = clients(mesh);
    const t = await c.grpc.submitTask({ type: "noop" });
    // Warm every path's connection first.
    await c.grpc.getTask({ taskId: t.id });
    await c.connect.getTask({ taskId: t.id });
    expect((await c.rest(`/v1/tasks/${t.id}`)).status).toBe(200);
    const only = mesh.schedulers[0] as ServiceProcess;
    only.child.kill("SIGSTOP");
    cleanup.push(async () => only.child.kill("SIGCONT"));
    try {
      const t0 = Date.now();
      const [g, k, r] = await Promise.all([
        failure(c.grpc.getTask({ taskId: t.id }, { timeoutMs: 4000 })),
        failure(c.connect.getTask({ taskId: t.id }, { timeoutMs: 4000 })),
        c.rest(`/v1/tasks/${t.id}`, { headers: { "grpc-timeout": "4S" } }),
      ]);
      const took = Date.now() - t0;
      process.stdout.write(`hung scheduler: DEADLINE_EXCEEDED after ${took} ms\n`);
      expect(g?.code, String(g)).toBe(Code.DeadlineExceeded);
      expect(k?.code, String(k)).toBe(Code.DeadlineExceeded);
      expect(r.status).toBe(504);
      expect(took).toBeLessThan(4500);
    } finally {
      only.child.kill("SIGCONT");
    }
  });

  it("retries reads transparently when a scheduler dies mid-call, and answers UNAVAILABLE (503) to a write it may have taken", async () => {
    mesh = await start("midcall", 2);
    const c = clients(mesh);
    const t = await c.grpc.submitTask({ type: "noop" });
    const victim = mesh.schedulers[0] as ServiceProcess;
    // Every replica's connection is warm, so the calls below are written to the victim at once.
    for (let i = 0; i < 4; i++) {
      await c.grpc.getTask({ taskId: t.id });
      await c.connect.getTask({ taskId: t.id });
      await c.rest(`/v1/tasks/${t.id}`);
    }
    // Stopped first, so the calls are surely in flight on it when it dies.
    victim.child.kill("SIGSTOP");
    const reads = Array.from({ length: 4 }, () => [
      failure(c.grpc.getTask({ taskId: t.id })),
      failure(c.connect.getTask({ taskId: t.id })),
      c.rest(`/v1/tasks/${t.id}`).then((r) => r.status),
    ]).flat();
    // RetryTask is not repeatable: on the victim it fails, elsewhere it is answered (the task is not FAILED).
    const writes = Array.from({ length: 6 }, () => c.rest(`/v1/tasks/${t.id}:retry`, { method: "POST", body: "{}" }));
    await new Promise((r) => setTimeout(r, 300));
    await victim.kill();
    const readResults = await Promise.all(reads);
    expect(readResults.filter((x) => x !== undefined && x !== 200)).toEqual([]);
    const statuses = await Promise.all(
      writes.map(async (p) => {
        const r = await p;
        return { status: r.status, retryAfter: r.headers.get("retry-after"), body: await r.text() };
      }),
    );
    process.stdout.write(`killed mid-call: retry statuses ${statuses.map((s) => s.status).join(",")}\n`);
    for (const s of statuses) {
      expect([400, 503], s.body).toContain(s.status);
      if (s.status === 503) expect(Number(s.retryAfter)).toBeGreaterThanOrEqual(1);
    }
    expect(statuses.some((s) => s.status === 503)).toBe(true);
  });
});
