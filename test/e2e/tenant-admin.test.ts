/**
 * Administration is tenant-scoped: an `admin` key manages its own tenant's keys and tasks, and
 * nothing that tenants share; `cluster:admin` (the bootstrap key) manages the rest. Each case is
 * what an admin of one tenant tried against the others before.
 */
import { Code, createClient } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { ApiKeyService } from "../../gen/taskmesh/v1/api_key_service_pb.js";
import { ConfigService } from "../../gen/taskmesh/v1/config_service_pb.js";
import { TaskStatus } from "../../gen/taskmesh/v1/task_pb.js";
import { codeOf, gatewayClients, gatewayTransport, waitTerminal } from "../support/clients.js";
import { uniquePrefix } from "../support/ids.js";
import { startMesh, type Mesh } from "../support/mesh.js";

describe("tenant-scoped administration", () => {
  let mesh: Mesh;
  const clients = (key: string) => {
    const transport = gatewayTransport(mesh.gateway.address, key);
    return { ...gatewayClients(mesh.gateway.address, key), keys: createClient(ApiKeyService, transport), config: createClient(ConfigService, transport) };
  };

  beforeAll(async () => {
    mesh = await startMesh({ etcdEndpoint: inject("etcdEndpoint"), redisUrl: inject("redisUrl"), prefix: uniquePrefix("tadmin"), workers: 1 });
  });
  afterAll(async () => {
    await mesh?.close();
  });

  it("keeps a tenant's admin to its own tenant's keys, and away from queues and configuration", async () => {
    const root = clients(mesh.apiKey);
    const acmeAdmin = clients((await root.keys.createApiKey({ tenant: "acme", scopes: ["admin"] })).secret);
    const betaKey = await root.keys.createApiKey({ tenant: "beta", scopes: ["tasks:read", "tasks:write"] });
    // Keys for another tenant, or with more power than its own: refused.
    expect(await codeOf(acmeAdmin.keys.createApiKey({ tenant: "beta", scopes: ["tasks:read"] }))).toBe(Code.PermissionDenied);
    expect(await codeOf(acmeAdmin.keys.createApiKey({ tenant: "acme", scopes: ["cluster:admin"] }))).toBe(Code.PermissionDenied);
    const own = await acmeAdmin.keys.createApiKey({ tenant: "acme", scopes: ["tasks:read"] });
    expect(own.apiKey?.tenant).toBe("acme");
    // It sees its tenant's keys only, and cannot revoke another's (which keeps working).
    const listed = await acmeAdmin.keys.listApiKeys({});
    expect(listed.apiKeys.length).toBeGreaterThanOrEqual(2);
    expect(listed.apiKeys.every((k) => k.tenant === "acme")).toBe(true);
    expect(await codeOf(acmeAdmin.keys.revokeApiKey({ id: betaKey.apiKey?.id ?? "" }))).toBe(Code.NotFound);
    expect(await codeOf(clients(betaKey.secret).tasks.listTasks({}))).toBe("ok");
    // Shared things: the queues every tenant uses, the configuration.
    expect(await codeOf(acmeAdmin.cluster.pauseQueue({ queue: "default" }))).toBe(Code.PermissionDenied);
    expect(await codeOf(acmeAdmin.config.putConfig({ namespace: "worker", value: { slots: 1 } }))).toBe(Code.PermissionDenied);
    // The cluster admin may.
    expect(await codeOf(root.cluster.pauseQueue({ queue: "tadmin-q" }))).toBe("ok");
    expect(await codeOf(root.cluster.resumeQueue({ queue: "tadmin-q" }))).toBe("ok");
    expect((await root.keys.listApiKeys({})).apiKeys.some((k) => k.tenant === "beta")).toBe(true);
  });

  it("gives each tenant its own file_operation root", async () => {
    const root = clients(mesh.apiKey);
    const acme = clients((await root.keys.createApiKey({ tenant: "acme", scopes: ["tasks:write", "tasks:read"] })).secret);
    const beta = clients((await root.keys.createApiKey({ tenant: "beta", scopes: ["tasks:write", "tasks:read"] })).secret);
    const wrote = await acme.tasks.submitTask({ type: "file_operation", payload: { operation: "write", path: "plans.txt", content: "acme only" } });
    expect((await waitTerminal(acme.tasks, [wrote.id], 20_000))[0]?.status).toBe(TaskStatus.SUCCEEDED);
    const peek = await beta.tasks.submitTask({ type: "file_operation", payload: { operation: "read", path: "plans.txt" }, maxAttempts: 1 });
    const [seen] = await waitTerminal(beta.tasks, [peek.id], 20_000);
    expect(seen?.status).toBe(TaskStatus.FAILED);
    expect(seen?.error?.code).toBe("NOT_FOUND");
    const escape = await beta.tasks.submitTask({ type: "file_operation", payload: { operation: "read", path: "../acme/plans.txt" }, maxAttempts: 1 });
    expect((await waitTerminal(beta.tasks, [escape.id], 20_000))[0]?.error?.code).toBe("INVALID_ARGUMENT");
    const back = await acme.tasks.submitTask({ type: "file_operation", payload: { operation: "read", path: "plans.txt" } });
    expect((await waitTerminal(acme.tasks, [back.id], 20_000))[0]?.result).toEqual({ content: "acme only", size: 9 });
  });
});
