import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { type SubmitTaskRequest, SubmitTaskRequestSchema, type Task, TaskSchema } from "../../gen/taskmesh/v1/task_pb.js";
import { uniquePrefix } from "../support/ids.js";
import { startMesh, type Mesh } from "../support/mesh.js";

const run = promisify(execFile);
const buf = join(import.meta.dirname, "../../node_modules/.bin/buf");

describe("the gateway over REST+JSON, curl and buf curl", () => {
  let mesh: Mesh;
  let base: string;
  beforeAll(async () => {
    mesh = await startMesh({
      etcdEndpoint: inject("etcdEndpoint"),
      redisUrl: inject("redisUrl"),
      prefix: uniquePrefix("rest"),
      workers: 1,
    });
    base = `http://${mesh.gateway.address}`;
  });
  afterAll(async () => {
    await mesh?.close();
  });

  const auth = () => ({ authorization: `Bearer ${mesh.apiKey}` });

  it("submits, reads, lists, watches (NDJSON and SSE) and cancels tasks over REST", async () => {
    const created = await fetch(`${base}/v1/tasks`, {
      method: "POST",
      headers: { ...auth(), "content-type": "application/json" },
      body: JSON.stringify({ type: "data_processing", payload: { data: [{ x: 1 }, { x: 2 }], item_delay_ms: 20 }, labels: { via: "rest" } }),
    });
    expect(created.status).toBe(200);
    const task = (await created.json()) as { id: string; status: string };
    expect(task.status).toBe("TASK_STATUS_QUEUED");

    const ndjson = await fetch(`${base}/v1/tasks/${task.id}:watch`, { headers: auth() });
    expect(ndjson.headers.get("content-type")).toContain("ndjson");
    const lines = (await ndjson.text()).trim().split("\n").map((l) => JSON.parse(l) as { result: { task: { status: string } } });
    expect(lines.at(-1)?.result.task.status).toBe("TASK_STATUS_SUCCEEDED");

    const sse = await fetch(`${base}/v1/tasks/${task.id}:watch`, { headers: { ...auth(), accept: "text/event-stream" } });
    expect(sse.headers.get("content-type")).toContain("text/event-stream");
    const events = (await sse.text()).split("\n\n").filter((e) => e.startsWith("data: "));
    expect(events.length).toBe(lines.length);

    const got = (await (await fetch(`${base}/v1/tasks/${task.id}`, { headers: auth() })).json()) as { result: unknown };
    expect(got.result).toEqual({ processed_data: [{ x: 2 }, { x: 4 }], items_processed: 2 });
    const list = (await (await fetch(`${base}/v1/tasks?type=data_processing&page_size=10`, { headers: auth() })).json()) as {
      tasks: { id: string }[];
    };
    expect(list.tasks.map((t) => t.id)).toContain(task.id);

    const long = (await (
      await fetch(`${base}/v1/tasks`, {
        method: "POST",
        headers: { ...auth(), "content-type": "application/json" },
        body: JSON.stringify({ type: "sleep", payload: { ms: 60000 }, delay: "30s" }),
      })
    ).json()) as { id: string; status: string };
    expect(long.status).toBe("TASK_STATUS_DELAYED");
    const cancelled = await fetch(`${base}/v1/tasks/${long.id}:cancel`, {
      method: "POST",
      headers: { ...auth(), "content-type": "application/json" },
      body: JSON.stringify({ reason: "not needed" }),
    });
    expect(((await cancelled.json()) as { status: string }).status).toBe("TASK_STATUS_CANCELLED");
  });

  it("maps errors to HTTP statuses with google.rpc.Status bodies", async () => {
    const noKey = await fetch(`${base}/v1/tasks/x`);
    expect(noKey.status).toBe(401);
    expect(((await noKey.json()) as { code: number }).code).toBe(16);
    const missing = await fetch(`${base}/v1/tasks/01JZZZZZZZZZZZZZZZZZZZZZZZ`, { headers: auth() });
    expect(missing.status).toBe(404);
    const bad = await fetch(`${base}/v1/tasks`, {
      method: "POST",
      headers: { ...auth(), "content-type": "application/json" },
      body: JSON.stringify({ type: "nope" }),
    });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { message: string }).message).toMatch(/^type: unknown task type/);
    const malformed = await fetch(`${base}/v1/tasks`, { method: "POST", headers: { ...auth(), "content-type": "application/json" }, body: "{" });
    expect(malformed.status).toBe(400);
    expect((await fetch(`${base}/v1/nothing-here`, { headers: auth() })).status).toBe(404);
    expect((await fetch(`${base}/v1/tasks/x`, { method: "DELETE", headers: auth() })).status).toBe(405);
    expect((await fetch(`${base}/v1/tasks?bogus=1`, { headers: auth() })).status).toBe(400);
  });

  it("serves curl over HTTP/1.1 and HTTP/2, Connect JSON, and an OpenAPI document", async () => {
    for (const proto of ["--http1.1", "--http2-prior-knowledge"]) {
      const { stdout } = await run(
        "curl",
        ["-sS", proto, "-H", `Authorization: Bearer ${mesh.apiKey}`, "-H", "Content-Type: application/json", "-d", '{"type":"noop"}', `${base}/v1/tasks`],
        { timeout: 10_000 },
      );
      expect(JSON.parse(stdout)).toMatchObject({ type: "noop", tenant: "default" });
      const { stdout: connect } = await run(
        "curl",
        ["-sS", proto, "-H", `Authorization: Bearer ${mesh.apiKey}`, "-H", "Content-Type: application/json", "-d", "{}", `${base}/taskmesh.v1.ClusterService/GetClusterStatus`],
        { timeout: 10_000 },
      );
      expect(JSON.parse(connect)).toHaveProperty("workers");
    }
    const doc = (await (await fetch(`${base}/openapi.json`)).json()) as { openapi: string; paths: Record<string, unknown> };
    expect(doc.openapi).toMatch(/^3\./);
    expect(Object.keys(doc.paths)).toEqual(expect.arrayContaining(["/v1/tasks", "/v1/tasks/{task_id}:cancel"]));
  });

  it("serves a plain @grpc/grpc-js client", async () => {
    const Client = grpc.makeGenericClientConstructor(
      {
        submitTask: {
          path: "/taskmesh.v1.TaskService/SubmitTask",
          requestStream: false,
          responseStream: false,
          requestSerialize: (m: SubmitTaskRequest) => Buffer.from(toBinary(SubmitTaskRequestSchema, m)),
          requestDeserialize: (b: Buffer) => fromBinary(SubmitTaskRequestSchema, b),
          responseSerialize: (m: Task) => Buffer.from(toBinary(TaskSchema, m)),
          responseDeserialize: (b: Buffer) => fromBinary(TaskSchema, b),
        },
      },
      "TaskService",
    );
    const client = new Client(mesh.gateway.address, grpc.credentials.createInsecure());
    try {
      const md = new grpc.Metadata();
      md.set("authorization", `Bearer ${mesh.apiKey}`);
      const task = await new Promise<Task>((resolve, reject) => {
        client.makeUnaryRequest(
          "/taskmesh.v1.TaskService/SubmitTask",
          (m: SubmitTaskRequest) => Buffer.from(toBinary(SubmitTaskRequestSchema, m)),
          (b: Buffer) => fromBinary(TaskSchema, b),
          create(SubmitTaskRequestSchema, { type: "noop" }),
          md,
          (err: grpc.ServiceError | null, res?: Task) => (err !== null || res === undefined ? reject(err) : resolve(res)),
        );
      });
      expect(task.type).toBe("noop");
      const denied = await new Promise<grpc.ServiceError | null>((resolve) => {
        client.makeUnaryRequest(
          "/taskmesh.v1.TaskService/SubmitTask",
          (m: SubmitTaskRequest) => Buffer.from(toBinary(SubmitTaskRequestSchema, m)),
          (b: Buffer) => fromBinary(TaskSchema, b),
          create(SubmitTaskRequestSchema, { type: "noop" }),
          (err: grpc.ServiceError | null) => resolve(err),
        );
      });
      expect(denied?.code).toBe(grpc.status.UNAUTHENTICATED);
    } finally {
      client.close();
    }
  });

  it("lists services and submits a task with buf curl through reflection", async () => {
    const { stdout: services } = await run(buf, ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "--list-services", base], {
      timeout: 30_000,
    });
    expect(services.split("\n")).toEqual(expect.arrayContaining(["taskmesh.v1.TaskService", "taskmesh.v1.ApiKeyService"]));
    const { stdout } = await run(
      buf,
      [
        "curl", "--protocol", "grpc", "--http2-prior-knowledge",
        "-H", `Authorization: Bearer ${mesh.apiKey}`,
        "-d", '{"type":"noop","priority":"PRIORITY_HIGH"}',
        `${base}/taskmesh.v1.TaskService/SubmitTask`,
      ],
      { timeout: 30_000 },
    );
    expect(JSON.parse(stdout)).toMatchObject({ type: "noop", priority: "PRIORITY_HIGH", status: "TASK_STATUS_QUEUED" });
  });
});
