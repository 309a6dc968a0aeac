import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { RetryInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { toJsonString } from "@bufbuild/protobuf";
import { ApiKeyService, ListApiKeysResponseSchema } from "../../gen/taskmesh/v1/api_key_service_pb.js";
import { TaskStatus } from "../../gen/taskmesh/v1/task_pb.js";
import { gatewayClients, gatewayTransport, waitTerminal } from "../support/clients.js";
import { uniquePrefix } from "../support/ids.js";
import { startMesh, startService, type Mesh } from "../support/mesh.js";
import { waitFor } from "../support/wait.js";

function keyClient(address: string, key: string) {
  return createClient(ApiKeyService, gatewayTransport(address, key));
}

async function code(p: Promise<unknown>): Promise<Code | "ok"> {
  try {
    await p;
    return "ok";
  } catch (err) {
    return ConnectError.from(err).code;
  }
}

describe("gateway: API keys, scopes, tenants and rate limits", () => {
  let mesh: Mesh;
  beforeAll(async () => {
    mesh = await startMesh({
      etcdEndpoint: inject("etcdEndpoint"),
      redisUrl: inject("redisUrl"),
      prefix: uniquePrefix("auth"),
      workers: 1,
      gatewayArgs: ["--rate-limit", "10", "--rate-burst", "30"],
    });
  });
  afterAll(async () => {
    await mesh?.close();
  });

  it("answers each failure with its code, stores nothing and leaks nothing across tenants", async () => {
    const admin = keyClient(mesh.gateway.address, mesh.apiKey);
    const acme = await admin.createApiKey({ tenant: "acme", scopes: ["tasks:write", "tasks:read"], description: "acme app" });
    const globex = await admin.createApiKey({ tenant: "globex", scopes: ["tasks:read", "tasks:write"] });
    const readOnly = await admin.createApiKey({ tenant: "acme", scopes: ["tasks:read"] });
    expect(acme.secret).toMatch(/^tm_[0-9a-f]{16}_/);
    const listed = await admin.listApiKeys({});
    expect(listed.apiKeys.map((k) => k.id)).toEqual(expect.arrayContaining([acme.apiKey?.id, globex.apiKey?.id]));
    expect(toJsonString(ListApiKeysResponseSchema, listed)).not.toContain(acme.secret.slice(20));

    const a = gatewayClients(mesh.gateway.address, acme.secret);
    const task = await a.tasks.submitTask({ type: "noop" });
    expect(task.tenant).toBe("acme");
    await waitTerminal(a.tasks, [task.id]);

    // No key, a made-up key, a malformed key.
    expect(await code(gatewayClients(mesh.gateway.address).tasks.getTask({ taskId: task.id }))).toBe(Code.Unauthenticated);
    expect(await code(gatewayClients(mesh.gateway.address, `tm_${"0".repeat(16)}_${"x".repeat(43)}`).tasks.getTask({ taskId: task.id }))).toBe(
      Code.Unauthenticated,
    );
    expect(await code(gatewayClients(mesh.gateway.address, "garbage").tasks.getTask({ taskId: task.id }))).toBe(Code.Unauthenticated);
    // Wrong scope: read-only key cannot submit; task keys cannot administer.
    const ro = gatewayClients(mesh.gateway.address, readOnly.secret);
    expect(await code(ro.tasks.submitTask({ type: "noop" }))).toBe(Code.PermissionDenied);
    expect(await code(ro.tasks.getTask({ taskId: task.id }))).toBe("ok");
    expect(await code(keyClient(mesh.gateway.address, acme.secret).listApiKeys({}))).toBe(Code.PermissionDenied);
    expect(await code(a.cluster.getClusterStatus({}))).toBe(Code.PermissionDenied);
    // Another tenant's task does not exist for you.
    const g = gatewayClients(mesh.gateway.address, globex.secret);
    expect(await code(g.tasks.getTask({ taskId: task.id }))).toBe(Code.NotFound);
    expect(await code(g.tasks.cancelTask({ taskId: task.id }))).toBe(Code.NotFound);
    expect((await g.tasks.listTasks({})).tasks.map((t) => t.id)).not.toContain(task.id);
    // Revoked: refused at once.
    await admin.revokeApiKey({ id: readOnly.apiKey?.id ?? "" });
    expect(await code(ro.tasks.getTask({ taskId: task.id }))).toBe(Code.Unauthenticated);
    expect(await code(admin.revokeApiKey({ id: readOnly.apiKey?.id ?? "" }))).toBe(Code.NotFound);
    // The same answers over REST, as HTTP statuses.
    const rest = (path: string, key?: string, init: RequestInit = {}) =>
      fetch(`http://${mesh.gateway.address}${path}`, {
        ...init,
        headers: { ...(key !== undefined ? { authorization: `Bearer ${key}` } : {}), "content-type": "application/json" },
      }).then((r) => r.status);
    expect(await rest(`/v1/tasks/${task.id}`)).toBe(401);
    expect(await rest(`/v1/tasks/${task.id}`, "garbage")).toBe(401);
    expect(await rest(`/v1/tasks/${task.id}`, readOnly.secret)).toBe(401);
    expect(await rest(`/v1/tasks/${task.id}`, globex.secret)).toBe(404);
    expect(await rest(`/v1/tasks/${task.id}`, acme.secret)).toBe(200);
    expect(await rest("/v1/apikeys", acme.secret)).toBe(403);
    expect(await rest("/v1/apikeys", mesh.apiKey)).toBe(200);
    // Bad key requests.
    expect(await code(admin.createApiKey({ tenant: "bad tenant", scopes: ["tasks:read"] }))).toBe(Code.InvalidArgument);
    expect(await code(admin.createApiKey({ tenant: "t", scopes: ["root"] }))).toBe(Code.InvalidArgument);
  });

  it("limits each key to its token bucket with RESOURCE_EXHAUSTED and a retry hint, and stores nothing refused", async () => {
    const admin = keyClient(mesh.gateway.address, mesh.apiKey);
    const k = await admin.createApiKey({ tenant: "limited", scopes: ["tasks:write", "tasks:read"] });
    const c = gatewayClients(mesh.gateway.address, k.secret);
    const results = await Promise.all(Array.from({ length: 40 }, () => code(c.tasks.submitTask({ type: "noop" }))));
    const ok = results.filter((r) => r === "ok").length;
    // A burst of 30, refilled at 10/s while the 40 calls are in flight.
    expect(ok).toBeGreaterThanOrEqual(30);
    expect(ok).toBeLessThanOrEqual(35);
    expect(results.filter((r) => r === Code.ResourceExhausted).length).toBe(40 - ok);
    // Over REST the refusal is a 429 with Retry-After.
    let status = 0;
    for (let i = 0; i < 50 && status !== 429; i++) {
      status = (await fetch(`http://${mesh.gateway.address}/v1/tasks/none`, { headers: { authorization: `Bearer ${k.secret}` } })).status;
    }
    expect(status).toBe(429);
    // The refusal carries a retry hint (the bucket refills meanwhile, so drain it first).
    let refused: ConnectError | undefined;
    for (let i = 0; i < 50 && refused === undefined; i++) {
      refused = await c.tasks.getTask({ taskId: "none" }).then(
        () => undefined,
        (err: unknown) => (ConnectError.from(err).code === Code.ResourceExhausted ? ConnectError.from(err) : undefined),
      );
    }
    expect(Number(refused?.metadata.get("retry-after"))).toBeGreaterThanOrEqual(1);
    expect(refused?.findDetails(RetryInfoSchema)[0]?.retryDelay).toBeDefined();
    // Only the accepted submissions exist; another key is not affected.
    await waitFor(async () => {
      try {
        return (await c.tasks.listTasks({ pageSize: 100 })).tasks.length === ok;
      } catch {
        return false;
      }
    }, { timeoutMs: 5000, intervalMs: 250 });
  });
});

describe("gateway: resilience towards schedulers", () => {
  let mesh: Mesh;
  beforeAll(async () => {
    mesh = await startMesh({
      etcdEndpoint: inject("etcdEndpoint"),
      redisUrl: inject("redisUrl"),
      prefix: uniquePrefix("breaker"),
      workers: 1,
    });
  });
  afterAll(async () => {
    await mesh?.close();
  });

  it("fails fast with UNAVAILABLE and a retry hint while the only scheduler is down, and recovers without a restart", async () => {
    const c = gatewayClients(mesh.gateway.address, mesh.apiKey);
    const t = await c.tasks.submitTask({ type: "noop" });
    const only = mesh.schedulers[0];
    if (only === undefined) throw new Error("no scheduler");
    const args = only.child.spawnargs.slice(only.child.spawnargs.indexOf("--port") + 2);
    await only.kill();
    // Every call fails quickly (never hangs), first as unreachable, then with the breaker open.
    for (let i = 0; i < 6; i++) {
      const t0 = Date.now();
      let err: ConnectError | undefined;
      try {
        await c.tasks.getTask({ taskId: t.id });
      } catch (e) {
        err = ConnectError.from(e);
      }
      expect(err?.code, `call ${i}: ${String(err)}`).toBe(Code.Unavailable);
      expect(Date.now() - t0).toBeLessThan(1000);
      if (i === 5) expect(Number(err?.metadata.get("retry-after"))).toBeGreaterThanOrEqual(1);
    }
    const rest = await fetch(`http://${mesh.gateway.address}/v1/tasks/${t.id}`, {
      headers: { authorization: `Bearer ${mesh.apiKey}` },
    });
    expect(rest.status).toBe(503);
    expect(Number(rest.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    const again = await startService("scheduler", "scheduler-again", args, { port: only.port });
    mesh.schedulers.push(again);
    // Calls succeed again, and the task finishes under the new scheduler (its worker re-sends
    // the result the dead scheduler never acknowledged, or it is re-run after its lease).
    const got = await waitFor(
      async () => {
        try {
          const x = await c.tasks.getTask({ taskId: t.id });
          return x.status === TaskStatus.SUCCEEDED ? x : undefined;
        } catch {
          return undefined;
        }
      },
      { timeoutMs: 20_000, intervalMs: 100 },
    );
    expect(got.attempt).toBeGreaterThanOrEqual(1);
  });
});
