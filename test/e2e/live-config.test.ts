import { createServer, type Server } from "node:http";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { ApiKeyService } from "../../gen/taskmesh/v1/api_key_service_pb.js";
import { ConfigService } from "../../gen/taskmesh/v1/config_service_pb.js";
import { TaskStatus } from "../../gen/taskmesh/v1/task_pb.js";
import { gatewayClients, gatewayTransport, waitTerminal, type GatewayClients } from "../support/clients.js";
import { uniquePrefix } from "../support/ids.js";
import { startMesh, type Mesh } from "../support/mesh.js";
import { waitFor } from "../support/wait.js";

describe("configuration applied live, without restarts", () => {
  let mesh: Mesh;
  let c: GatewayClients;
  let config: Client<typeof ConfigService>;
  let http: Server;
  let httpPort = 0;

  beforeAll(async () => {
    http = createServer((_req, res) => res.end("inside"));
    await new Promise<void>((r) => http.listen(0, "127.0.0.1", r));
    const a = http.address();
    httpPort = typeof a === "object" && a !== null ? a.port : 0;
    mesh = await startMesh({
      etcdEndpoint: inject("etcdEndpoint"),
      redisUrl: inject("redisUrl"),
      prefix: uniquePrefix("live"),
      config: true,
      workers: 1,
      slots: 2,
    });
    c = gatewayClients(mesh.gateway.address, mesh.apiKey);
    config = createClient(
      ConfigService,
      gatewayTransport(mesh.gateway.address, mesh.apiKey),
    );
  });
  afterAll(async () => {
    await mesh?.close();
    await new Promise((r) => http?.close(r));
  });

  it("runs 8 tasks at once within 1 s of raising a worker's slots from 2 to 8, losing none", async () => {
    const workerId = mesh.workers[0]?.name ?? "";
    const sub = await c.tasks.submitTasks({
      tasks: Array.from({ length: 12 }, () => ({ type: "sleep", payload: { ms: 2500 } })),
    });
    const ids = sub.tasks.map((t) => t.id);
    const running = async () => {
      const s = await c.cluster.getClusterStatus({});
      return Number(s.queues.find((q) => q.name === "default")?.running ?? 0n);
    };
    await waitFor(async () => (await running()) === 2);
    const t0 = Date.now();
    await config.putConfig({ namespace: `worker/${workerId}`, value: { slots: 8 } });
    await waitFor(async () => (await running()) === 8, { timeoutMs: 5000, intervalMs: 20 });
    expect(Date.now() - t0).toBeLessThan(1000);
    const done = await waitTerminal(c.tasks, ids, 30_000);
    for (const t of done) {
      expect(t.status).toBe(TaskStatus.SUCCEEDED);
      expect(t.attempt).toBe(1);
    }
    const workers = await c.cluster.listWorkers({});
    expect(workers.workers.find((w) => w.id === workerId)?.slots).toBe(8);
  });

  it("lets http_request reach a host once the allow-list in config names it", async () => {
    const req = { type: "http_request", payload: { method: "GET", url: `http://127.0.0.1:${httpPort}/` }, maxAttempts: 1 };
    const [refused] = await waitTerminal(c.tasks, [(await c.tasks.submitTask(req)).id]);
    expect(refused?.error?.code).toBe("FORBIDDEN_TARGET");
    await config.putConfig({ namespace: "worker", value: { http_allowed_hosts: ["127.0.0.1"] } });
    const ok = await waitFor(
      async () => {
        const [t] = await waitTerminal(c.tasks, [(await c.tasks.submitTask(req)).id]);
        return t?.status === TaskStatus.SUCCEEDED ? t : undefined;
      },
      { timeoutMs: 5000, intervalMs: 50 },
    );
    expect(ok.result).toMatchObject({ status: 200, body: "inside" });
  });

  it("applies the scheduler's default retry policy from config", async () => {
    await config.putConfig({ namespace: "scheduler", value: { default_max_attempts: 1 } });
    const t = await waitFor(
      async () => {
        const x = await c.tasks.submitTask({ type: "noop" });
        return x.maxAttempts === 1 ? x : undefined;
      },
      { timeoutMs: 5000, intervalMs: 50 },
    );
    expect(t.maxAttempts).toBe(1);
    await config.putConfig({ namespace: "scheduler", value: { default_max_attempts: 5, default_backoff_initial_ms: 50 } });
    await waitFor(async () => (await c.tasks.submitTask({ type: "noop" })).maxAttempts === 5, { timeoutMs: 5000, intervalMs: 50 });
    const x = await c.tasks.submitTask({ type: "noop" });
    expect(x.backoff?.initial?.nanos).toBe(50_000_000);
  });

  it("applies the gateway's rate limit and request size limit from config", async () => {
    const admin = c;
    await config.putConfig({ namespace: "gateway", value: { rate_limit_per_second: 1, rate_limit_burst: 2 } });
    const limited = await waitFor(
      async () => {
        const codes = await Promise.all(
          Array.from({ length: 4 }, () =>
            admin.tasks.getTask({ taskId: "none" }).then(
              () => "ok",
              (e: unknown) => ConnectError.from(e).code,
            ),
          ),
        );
        return codes.includes(Code.ResourceExhausted) ? codes : undefined;
      },
      { timeoutMs: 5000, intervalMs: 100 },
    );
    expect(limited).toContain(Code.ResourceExhausted);
    // Back to unlimited, and a 2 KiB request limit (the put itself waits for a token).
    await waitFor(
      () => config.putConfig({ namespace: "gateway", value: { rate_limit_per_second: 0, max_request_bytes: 2048 } }).then(() => true),
      { timeoutMs: 10_000, intervalMs: 200 },
    );
    const big = { type: "noop", payload: { blob: "x".repeat(4096) } };
    const refused = await waitFor(
      async () => {
        const r = await fetch(`http://${mesh.gateway.address}/v1/tasks`, {
          method: "POST",
          headers: { authorization: `Bearer ${mesh.apiKey}`, "content-type": "application/json" },
          body: JSON.stringify(big),
        });
        return r.status === 413 || r.status === 400 ? r.status : undefined;
      },
      { timeoutMs: 5000, intervalMs: 100 },
    );
    expect([400, 413]).toContain(refused);
    await config.putConfig({ namespace: "gateway", value: {} });
  });

  it("applies one API key's own rate limit from config, leaving the others unlimited", async () => {
    const keys = createClient(
      ApiKeyService,
      gatewayTransport(mesh.gateway.address, mesh.apiKey),
    );
    const made = await keys.createApiKey({ tenant: "slow", scopes: ["tasks:read"] });
    const slow = gatewayClients(mesh.gateway.address, made.secret);
    const id = made.apiKey?.id ?? "";
    await config.putConfig({ namespace: "gateway", value: { key_rate_limits: { [id]: { per_second: 1, burst: 2 } } } });
    const burst = () =>
      Promise.all(
        Array.from({ length: 4 }, () =>
          slow.tasks.listTasks({}).then(
            () => "ok" as const,
            (e: unknown) => ConnectError.from(e).code,
          ),
        ),
      );
    const limited = await waitFor(async () => {
      const codes = await burst();
      return codes.includes(Code.ResourceExhausted) ? codes : undefined;
    }, { timeoutMs: 5000, intervalMs: 100, what: "the key's own limit applied" });
    expect(limited).toContain(Code.ResourceExhausted);
    // The admin key is not limited meanwhile.
    const admin = await Promise.all(Array.from({ length: 10 }, () => c.tasks.listTasks({}).then(() => "ok")));
    expect(admin.every((x) => x === "ok")).toBe(true);
    await config.putConfig({ namespace: "gateway", value: {} });
    await waitFor(async () => (await burst()).every((x) => x === "ok"), { timeoutMs: 5000, intervalMs: 200, what: "the key's limit lifted" });
  });

  it("rolls a change out to labelled instances first (gray), then promotes or abandons it", async () => {
    const canary = await mesh.addWorker(`${mesh.redisPrefix}-canary`, ["--labels", "canary=true", "--slots", "3"]);
    const slotsOf = async (id: string) => (await c.cluster.listWorkers({})).workers.find((w) => w.id === id)?.slots;
    const plain = mesh.workers[0]?.name ?? "";
    // The canary is registered (healthy comes first) before the release targets it.
    await waitFor(async () => (await slotsOf(canary.name)) === 3, { timeoutMs: 10_000, intervalMs: 50 });
    const plainBefore = await slotsOf(plain);
    await config.putConfig({ namespace: "worker", value: { slots: 5 }, grayLabels: { canary: "true" } });
    await waitFor(async () => (await slotsOf(canary.name)) === 5, { timeoutMs: 10_000, intervalMs: 50 });
    expect(await slotsOf(plain)).toBe(plainBefore);
    await config.abandonGrayConfig({ namespace: "worker" });
    await waitFor(async () => (await slotsOf(canary.name)) === 3, { timeoutMs: 10_000, intervalMs: 50 });
    await config.putConfig({ namespace: "worker", value: { slots: 4 }, grayLabels: { canary: "true" } });
    await waitFor(async () => (await slotsOf(canary.name)) === 4, { timeoutMs: 5000, intervalMs: 50 });
    await config.promoteGrayConfig({ namespace: "worker" });
    // Promoted: every worker without its own override applies it (the plain one has worker/<id> = 8).
    const history = await config.getConfigHistory({ namespace: "worker" });
    expect(history.entries.length).toBeGreaterThanOrEqual(3);
    await waitFor(async () => (await slotsOf(canary.name)) === 4, { timeoutMs: 5000, intervalMs: 50 });
    expect((await config.getConfig({ namespace: "worker" })).value).toMatchObject({ slots: 4 });
  });
});
