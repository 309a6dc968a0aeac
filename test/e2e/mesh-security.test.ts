import { X509Certificate } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { readFile, rm } from "node:fs/promises";
import * as https from "node:https";
import * as tls from "node:tls";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { ConfigService } from "../../gen/taskmesh/v1/config_service_pb.js";
import { ScheduleService } from "../../gen/taskmesh/v1/schedule_service_pb.js";
import { SchedulerService } from "../../gen/taskmesh/v1/scheduler_service_pb.js";
import { TaskStatus } from "../../gen/taskmesh/v1/task_pb.js";
import { SchedulerMessageSchema, WorkerService, type SchedulerMessage } from "../../gen/taskmesh/v1/worker_service_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";
import type { MeshRole } from "../../lib/mesh-identity.js";
import { meshTransport, MeshSecurity, SERVICE_TOKEN_HEADER } from "../../lib/mesh-security.js";
import { AUTHOR_HEADER, TENANT_HEADER } from "../../lib/task-types.js";
import { codeOf, gatewayClients, waitTerminal } from "../support/clients.js";
import { uniquePrefix } from "../support/ids.js";
import { startMesh, startService, type Mesh } from "../support/mesh.js";
import { waitFor } from "../support/wait.js";

/** Opens a Work stream the way a scheduler does, and returns how it ended. */
async function openWork(client: Client<typeof WorkerService>, epoch: bigint): Promise<Code | "ok"> {
  async function* messages(): AsyncGenerator<SchedulerMessage> {
    yield create(SchedulerMessageSchema, { epoch });
    await new Promise((r) => setTimeout(r, 200));
  }
  try {
    for await (const _ of client.work(messages(), { timeoutMs: 3000 })) return "ok";
    return "ok";
  } catch (err) {
    return ConnectError.from(err).code;
  }
}

describe("mesh security: mTLS between the services, roles, identities", () => {
  let mesh: Mesh;
  const securities: MeshSecurity[] = [];
  /** Credentials of a client holding a certificate for `role`/`name` from the mesh's CA. */
  const as = async (role: MeshRole, name: string): Promise<MeshSecurity> => {
    const ca = mesh.ca;
    if (ca === undefined) throw new Error("mesh without CA");
    const files = await ca.issue({ role, name });
    const s = MeshSecurity.fromSettings({ "mesh-ca": ca.caCert, "mesh-cert": files.cert, "mesh-key": files.key, "service-token": "" });
    securities.push(s);
    return s;
  };
  const schedulerAddr = (): string => mesh.schedulers[0]?.address ?? "";
  const workerAddr = (): string => mesh.workers[0]?.address ?? "";
  const configAddr = (): string => mesh.config?.address ?? "";
  /** A TLS client that trusts the CA but has no certificate of its own. */
  const anonymous = async (address: string) =>
    createGrpcTransport({ baseUrl: `https://${address}`, nodeOptions: { ca: await readFile(mesh.ca?.caCert ?? ""), checkServerIdentity: () => undefined } });

  beforeAll(async () => {
    mesh = await startMesh({
      etcdEndpoint: inject("etcdEndpoint"),
      redisUrl: inject("redisUrl"),
      prefix: uniquePrefix("mtls"),
      workers: 1,
      config: true,
      tls: true,
    });
  });
  afterAll(async () => {
    for (const s of securities) s.close();
    await mesh?.close();
  });

  it("runs tasks end to end with every internal hop on mTLS", async () => {
    const { tasks } = gatewayClients(mesh.gateway.address, mesh.apiKey);
    const submitted = await tasks.submitTasks({ tasks: [{ type: "noop" }, { type: "sleep", payload: { ms: 10 } }] });
    const done = await waitTerminal(tasks, submitted.tasks.map((t) => t.id), 20_000);
    expect(done.map((t) => t.status)).toEqual([TaskStatus.SUCCEEDED, TaskStatus.SUCCEEDED]);
  });

  it("refuses callers without a certificate of the mesh CA on every internal port, and keeps health open", async () => {
    // Plaintext against a TLS port: nothing is served.
    const plain = createClient(SchedulerService, createGrpcTransport({ baseUrl: `http://${schedulerAddr()}` }));
    expect(await codeOf(plain.listTasks({}, { timeoutMs: 3000 }))).not.toBe("ok");
    // TLS without a client certificate: UNAUTHENTICATED, saying what is missing.
    const sched = createClient(SchedulerService, await anonymous(schedulerAddr()));
    const err = await sched.submitTask({ type: "noop" }, { headers: { [TENANT_HEADER]: "acme" } }).catch((e: unknown) => ConnectError.from(e));
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.Unauthenticated);
    expect((err as ConnectError).rawMessage).toMatch(/client certificate/);
    expect(await codeOf(sched.listTasks({}))).toBe(Code.Unauthenticated);
    expect(await codeOf(createClient(ConfigService, await anonymous(configAddr())).putConfig({ namespace: "worker", value: {} }))).toBe(
      Code.Unauthenticated,
    );
    expect(await openWork(createClient(WorkerService, await anonymous(workerAddr())), 1n << 62n)).toBe(Code.Unauthenticated);
    // A certificate from another CA is no better.
    const { DevCa } = await import("../../lib/dev-ca.js");
    const otherCa = await DevCa.open(`${mesh.filesRoot}-other-ca`);
    const otherFiles = await otherCa.issue({ role: "gateway", name: "impostor" });
    const other = createGrpcTransport({
      baseUrl: `https://${schedulerAddr()}`,
      nodeOptions: {
        ca: await readFile(mesh.ca?.caCert ?? ""),
        cert: await readFile(otherFiles.cert),
        key: await readFile(otherFiles.key),
        checkServerIdentity: () => undefined,
      },
    });
    expect(await codeOf(createClient(SchedulerService, other).listTasks({}))).toBe(Code.Unauthenticated);
    await rm(otherCa.dir, { recursive: true, force: true });
    // Health stays open (load balancers, probes); metrics do not.
    const health = createClient(Health, await anonymous(schedulerAddr()));
    expect((await health.check({ service: "" })).status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    const ca = await readFile(mesh.ca?.caCert ?? "");
    const get = (path: string) =>
      new Promise<number | undefined>((resolve, reject) => {
        https
          .get({ host: "127.0.0.1", port: mesh.schedulers[0]?.port, path, ca, checkServerIdentity: () => undefined }, (res) => {
            res.resume();
            resolve(res.statusCode);
          })
          .on("error", reject);
      });
    expect(await get("/healthz")).toBe(200);
    expect(await get("/metrics")).toBe(401);
  });

  it("lets each role call only what it needs: a worker cannot submit, the gateway cannot open a Work stream (no hijack)", async () => {
    const worker = await as("worker", "intruder");
    const sched = createClient(SchedulerService, meshTransport(worker, schedulerAddr(), ["scheduler"]).transport);
    const denied = await sched.submitTask({ type: "noop" }, { headers: { [TENANT_HEADER]: "acme" } }).catch((e: unknown) => ConnectError.from(e));
    expect((denied as ConnectError).code).toBe(Code.PermissionDenied);
    expect((denied as ConnectError).rawMessage).toMatch(/worker intruder may not call \/taskmesh\.v1\.SchedulerService\/SubmitTask/);
    // The hijack: a Work stream with a huge epoch from anything but a scheduler.
    for (const role of ["gateway", "producer", "worker", "admin"] as const) {
      const intruder = await as(role, "mallory");
      const client = createClient(WorkerService, meshTransport(intruder, workerAddr(), ["worker"]).transport);
      expect(await openWork(client, 1n << 62n)).toBe(Code.PermissionDenied);
    }
    // The real scheduler still drives that worker.
    const { tasks } = gatewayClients(mesh.gateway.address, mesh.apiKey);
    const t = await tasks.submitTask({ type: "noop" });
    expect((await waitTerminal(tasks, [t.id], 20_000))[0]?.status).toBe(TaskStatus.SUCCEEDED);
    // A client that expects a scheduler refuses a peer that is not one (a worker's port).
    const gw = await as("gateway", "probe");
    const wrongPeer = createClient(SchedulerService, meshTransport(gw, workerAddr(), ["scheduler"]).transport);
    expect(await codeOf(wrongPeer.listTasks({}, { timeoutMs: 3000 }))).toBe(Code.Unavailable);
  });

  it("lets a trusted producer call a scheduler directly, for its own tenant only", async () => {
    const producer = await as("producer", "acme");
    const admin = await as("admin", "ops");
    const sched = createClient(SchedulerService, meshTransport(producer, schedulerAddr(), ["scheduler"]).transport);
    const adminSched = createClient(SchedulerService, meshTransport(admin, schedulerAddr(), ["scheduler"]).transport);
    const mine = await sched.submitTask({ type: "noop", queue: "direct" });
    expect(mine.tenant).toBe("acme");
    const theirs = await adminSched.submitTask({ type: "noop", queue: "direct" }, { headers: { [TENANT_HEADER]: "beta" } });
    expect(theirs.tenant).toBe("beta");
    // Naming another tenant is refused, not obeyed.
    const spoof = await sched.listTasks({}, { headers: { [TENANT_HEADER]: "beta" } }).catch((e: unknown) => ConnectError.from(e));
    expect((spoof as ConnectError).code).toBe(Code.PermissionDenied);
    expect(await codeOf(sched.getTask({ taskId: theirs.id }))).toBe(Code.NotFound);
    const listed = await sched.listTasks({ pageSize: 1000 });
    expect(listed.tasks.every((t) => t.tenant === "acme")).toBe(true);
    expect(listed.tasks.map((t) => t.id)).toContain(mine.id);
    // Shared things are not a producer's: queues, workers.
    expect(await codeOf(sched.pauseQueue({ queue: "default" }))).toBe(Code.PermissionDenied);
    expect(await codeOf(sched.listWorkers({}))).toBe(Code.PermissionDenied);
    // Its schedules are its tenant's too.
    const schedules = createClient(ScheduleService, meshTransport(producer, schedulerAddr(), ["scheduler"]).transport);
    expect(await codeOf(schedules.listSchedules({}))).toBe("ok");
    // Neither can reach the config service's writes.
    const config = createClient(ConfigService, meshTransport(producer, configAddr(), ["config"]).transport);
    expect(await codeOf(config.getConfig({ namespace: "worker" }))).toBe(Code.PermissionDenied);
  });

  it("records a config change under the caller's certificate, not a header it sends", async () => {
    const worker = await as("worker", "w-x");
    const viaWorker = createClient(ConfigService, meshTransport(worker, configAddr(), ["config"]).transport);
    expect(await codeOf(viaWorker.getConfig({ namespace: "worker" }))).not.toBe(Code.PermissionDenied);
    expect(await codeOf(viaWorker.putConfig({ namespace: "mtls-test", value: { a: 1 } }))).toBe(Code.PermissionDenied);
    const admin = await as("admin", "ops");
    const viaAdmin = createClient(ConfigService, meshTransport(admin, configAddr(), ["config"]).transport);
    const stored = await viaAdmin.putConfig({ namespace: "mtls-test", value: { a: 1 } }, { headers: { [AUTHOR_HEADER]: "mallory" } });
    expect(stored.author).toBe("admin:ops");
  });

  it("serves a renewed certificate to new connections without a restart", async () => {
    const ca = mesh.ca;
    if (ca === undefined) throw new Error("mesh without CA");
    const serial = () =>
      new Promise<string>((resolve, reject) => {
        const s = tls.connect(
          { host: "127.0.0.1", port: mesh.schedulers[0]?.port, ca: [readFileSyncCa()], checkServerIdentity: () => undefined, ALPNProtocols: ["h2"] },
          () => {
            const c = s.getPeerX509Certificate();
            s.destroy();
            if (c === undefined) reject(new Error("no certificate"));
            else resolve(c.serialNumber);
          },
        );
        s.on("error", reject);
      });
    let caPem = "";
    const readFileSyncCa = () => caPem;
    caPem = await readFile(ca.caCert, "utf8");
    const before = await serial();
    const files = await ca.issue({ role: "scheduler", name: "scheduler-1", hosts: ["127.0.0.1", "localhost"] });
    const oldSerial = new X509Certificate(await readFile(files.cert)).serialNumber;
    expect(oldSerial).toBe(before);
    await rm(files.cert);
    await rm(files.key);
    const renewed = await ca.issue({ role: "scheduler", name: "scheduler-1", hosts: ["127.0.0.1", "localhost"] });
    const newSerial = new X509Certificate(await readFile(renewed.cert)).serialNumber;
    expect(newSerial).not.toBe(oldSerial);
    await waitFor(async () => (await serial()) === newSerial, { timeoutMs: 10_000, what: "the renewed certificate served" });
    // Everything still works across it.
    const { tasks } = gatewayClients(mesh.gateway.address, mesh.apiKey);
    const t = await tasks.submitTask({ type: "noop" });
    expect((await waitTerminal(tasks, [t.id], 20_000))[0]?.status).toBe(TaskStatus.SUCCEEDED);
  });
});

describe("mesh security without certificates", () => {
  const etcd = () => ["--etcd", inject("etcdEndpoint"), "--etcd-root", `/${uniquePrefix("nocert")}/`, "--redis", inject("redisUrl")];

  it("refuses to serve an internal port on a non-loopback address without mTLS or a token", async () => {
    const err = await startService("scheduler", "open-scheduler", [...etcd(), "--host", "0.0.0.0"], { healthTimeoutMs: 20_000 }).catch(
      (e: unknown) => e as Error,
    );
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(/refusing to serve scheduler on 0\.0\.0\.0 without mTLS/);
  });

  it("refuses a certificate of another role than the service's", async () => {
    const { DevCa } = await import("../../lib/dev-ca.js");
    const { mkdtemp } = await import("node:fs/promises");
    const { tmpdir } = await import("node:os");
    const { join } = await import("node:path");
    const dir = await mkdtemp(join(tmpdir(), "taskmesh-ca-"));
    try {
      const ca = await DevCa.open(dir);
      const files = await ca.issue({ role: "worker", name: "w" });
      const err = await startService("scheduler", "wrong-cert", [...etcd(), "--mesh-ca", ca.caCert, "--mesh-cert", files.cert, "--mesh-key", files.key]).catch(
        (e: unknown) => e as Error,
      );
      expect((err as Error).message).toMatch(/a worker's certificate .* needs a scheduler certificate/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("with a service token, serves only callers that present it", async () => {
    const token = "t".repeat(16) + "0123456789abcdef0123";
    const p = await startService("scheduler", "token-scheduler", [...etcd(), "--service-token", token]);
    try {
      const client = (headers: Record<string, string>) =>
        createClient(
          SchedulerService,
          createGrpcTransport({
            baseUrl: `http://${p.address}`,
            interceptors: [
              (next) => (req) => {
                for (const [k, v] of Object.entries(headers)) req.header.set(k, v);
                return next(req);
              },
            ],
          }),
        );
      expect(await codeOf(client({}).listTasks({}))).toBe(Code.Unauthenticated);
      expect(await codeOf(client({ [SERVICE_TOKEN_HEADER]: `${token}x` }).listTasks({}))).toBe(Code.Unauthenticated);
      expect(await codeOf(client({ [SERVICE_TOKEN_HEADER]: token }).listTasks({}))).toBe("ok");
      // The fast path (unary gRPC served off the HTTP/2 stream) checks it too.
      expect(await codeOf(client({}).submitTask({ type: "noop" }))).toBe(Code.Unauthenticated);
      const r = await fetch(`http://${p.address}/metrics`);
      expect(r.status).toBe(401);
    } finally {
      await p.stop();
    }
  });
});
