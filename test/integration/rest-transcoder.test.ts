import net from "node:net";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import {
  create,
  createFileRegistry,
  setExtension,
  toJson,
  type DescMessage,
  type DescMethodServerStreaming,
  type DescMethodUnary,
  type DescFile,
  type DescService,
  type JsonObject,
  type JsonValue,
  type Message,
  type MessageInitShape,
} from "@bufbuild/protobuf";
import {
  FieldDescriptorProto_Label as Label,
  FieldDescriptorProto_Type as Type,
  FileDescriptorProtoSchema,
  MethodOptionsSchema,
  StringValueSchema,
  file_google_protobuf_duration,
  file_google_protobuf_timestamp,
  timestampFromDate,
} from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, createRouterTransport, type ConnectRouter, type HandlerContext, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { file_google_api_annotations, http } from "../../gen/google/api/annotations_pb.js";
import { HttpRuleSchema } from "../../gen/google/api/http_pb.js";
import { ApiKeyService, file_taskmesh_v1_api_key_service } from "../../gen/taskmesh/v1/api_key_service_pb.js";
import { ClusterService, QueueStatsSchema, WorkerEventSchema, file_taskmesh_v1_cluster_service } from "../../gen/taskmesh/v1/cluster_service_pb.js";
import { ConfigEventSchema, ConfigService, file_taskmesh_v1_config_service } from "../../gen/taskmesh/v1/config_service_pb.js";
import { ScheduleService, file_taskmesh_v1_schedule_service } from "../../gen/taskmesh/v1/schedule_service_pb.js";
import { TaskEventSchema, TaskSchema, TaskStatus, file_taskmesh_v1_task } from "../../gen/taskmesh/v1/task_pb.js";
import { TaskService, file_taskmesh_v1_task_service } from "../../gen/taskmesh/v1/task_service_pb.js";
import { silentLogger } from "../../lib/logger.js";
import { createRegistry } from "../../lib/metrics.js";
import { startServer, type RpcServer } from "../../lib/server.js";
import { codeFromHttpStatus, errorDetailTypes, httpStatusFromCode } from "../../services/gateway/rest/http-status.js";
import { restBindings } from "../../services/gateway/rest/route-template.js";
import { createRestHandler } from "../../services/gateway/rest/transcoder.js";
import { waitFor } from "../support/wait.js";

const run = promisify(execFile);
const PUBLIC = [TaskService, ClusterService, ApiKeyService, ConfigService, ScheduleService];
const MAX_BODY = 256 * 1024;

// --- a test-only service for what the public protos do not use --------------------------------
//
// resttest.v1.EchoService.Echo(EchoRequest) returns (EchoResponse { EchoRequest request = 1; }):
//   GET /v1/parents/{parent.name}/echo/{id}   response_body "request"
//   additional: GET /v1/echo/{id}, PATCH /v1/echo/{id} body "parent"

function echoService(): DescService {
  const options = create(MethodOptionsSchema);
  setExtension(
    options,
    http,
    create(HttpRuleSchema, {
      pattern: { case: "get", value: "/v1/parents/{parent.name}/echo/{id}" },
      responseBody: "request",
      additionalBindings: [
        create(HttpRuleSchema, { pattern: { case: "get", value: "/v1/echo/{id}" }, responseBody: "request" }),
        create(HttpRuleSchema, { pattern: { case: "patch", value: "/v1/echo/{id}" }, body: "parent", responseBody: "request" }),
      ],
    }),
  );
  const f = (name: string, number: number, jsonName: string, type: Type, extra: { typeName?: string; repeated?: boolean } = {}) => ({
    name,
    number,
    jsonName,
    type,
    label: extra.repeated === true ? Label.REPEATED : Label.OPTIONAL,
    ...(extra.typeName === undefined ? {} : { typeName: extra.typeName }),
  });
  const file = create(FileDescriptorProtoSchema, {
    name: "resttest/v1/echo.proto",
    package: "resttest.v1",
    syntax: "proto3",
    dependency: ["google/api/annotations.proto", "google/protobuf/duration.proto", "google/protobuf/timestamp.proto", "taskmesh/v1/task.proto"],
    messageType: [
      { name: "Parent", field: [f("name", 1, "name", Type.STRING), f("note", 2, "note", Type.STRING)] },
      {
        name: "EchoRequest",
        field: [
          f("parent", 1, "parent", Type.MESSAGE, { typeName: ".resttest.v1.Parent" }),
          f("id", 2, "id", Type.STRING),
          f("count", 3, "count", Type.INT64),
          f("flag", 4, "flag", Type.BOOL),
          f("status", 5, "status", Type.ENUM, { typeName: ".taskmesh.v1.TaskStatus" }),
          f("tags", 6, "tags", Type.STRING, { repeated: true }),
          f("ratio", 7, "ratio", Type.DOUBLE),
          f("wait", 8, "wait", Type.MESSAGE, { typeName: ".google.protobuf.Duration" }),
          f("at", 9, "at", Type.MESSAGE, { typeName: ".google.protobuf.Timestamp" }),
          f("backoff", 10, "backoff", Type.MESSAGE, { typeName: ".taskmesh.v1.Backoff" }),
          f("labels", 11, "labels", Type.MESSAGE, { typeName: ".resttest.v1.EchoRequest.LabelsEntry", repeated: true }),
        ],
        nestedType: [{ name: "LabelsEntry", field: [f("key", 1, "key", Type.STRING), f("value", 2, "value", Type.STRING)], options: { mapEntry: true } }],
      },
      { name: "EchoResponse", field: [f("request", 1, "request", Type.MESSAGE, { typeName: ".resttest.v1.EchoRequest" })] },
    ],
    service: [{ name: "EchoService", method: [{ name: "Echo", inputType: ".resttest.v1.EchoRequest", outputType: ".resttest.v1.EchoResponse", options }] }],
  });
  const files: Record<string, DescFile> = {
    "google/api/annotations.proto": file_google_api_annotations,
    "google/protobuf/duration.proto": file_google_protobuf_duration,
    "google/protobuf/timestamp.proto": file_google_protobuf_timestamp,
    "taskmesh/v1/task.proto": file_taskmesh_v1_task,
  };
  const svc = createFileRegistry(file, (name) => files[name]).getService("resttest.v1.EchoService");
  if (svc === undefined) throw new Error("no echo service");
  return svc;
}

// --- stub implementations: record what they receive ------------------------------------------

interface Call {
  rpc: string;
  request: JsonObject;
  headers: Headers;
}

const calls: Call[] = [];
const aborted = new Set<string>();

function lastCall(rpc: string): Call | undefined {
  return calls.findLast((c) => c.rpc === rpc);
}

/** GetTask's `task_id` can ask for a failure: `fail-<code>`, `fail-3-badrequest`, `fail-8-retry`, `fail-14-header`. */
function maybeFail(id: string): void {
  const m = /^fail-(\d+)(?:-(\w+))?$/.exec(id);
  if (m === null) return;
  const code = Number(m[1]) as Code;
  if (m[2] === "badrequest") {
    throw new ConnectError("bad task id", code, undefined, [
      { desc: errorDetailTypes.badRequest, value: { fieldViolations: [{ field: "task_id", description: "must be a ULID" }] } },
    ]);
  }
  if (m[2] === "retry") {
    throw new ConnectError("slow down", code, undefined, [{ desc: errorDetailTypes.retryInfo, value: { retryDelay: { seconds: 2n, nanos: 500_000_000 } } }]);
  }
  if (m[2] === "header") throw new ConnectError("come back later", code, { "retry-after": "7" });
  // A detail type the REST handler has no descriptor for: rendered from Connect's debug JSON.
  if (m[2] === "wkt") throw new ConnectError("odd detail", code, undefined, [{ desc: StringValueSchema, value: { value: "x" } }]);
  throw new ConnectError(`stub failure ${code}`, code);
}

function waitAbort(ctx: HandlerContext): Promise<void> {
  return new Promise((resolve) => {
    if (ctx.signal.aborted) resolve();
    ctx.signal.addEventListener("abort", () => resolve(), { once: true });
  });
}

function unaryResponse(method: DescMethodUnary, req: Message): MessageInitShape<DescMessage> {
  const input = req as unknown as Record<string, unknown>;
  switch (method.output.typeName) {
    case "taskmesh.v1.Task":
      return create(TaskSchema, {
        id: typeof input.taskId === "string" ? input.taskId : "t-new",
        type: "email",
        status: TaskStatus.RUNNING,
        attempt: 2,
        labels: { team: "a" },
        createdAt: timestampFromDate(new Date("2024-01-02T03:04:05.678Z")),
      });
    case "taskmesh.v1.GetClusterStatusResponse":
      return { queues: [create(QueueStatsSchema, { name: "default", queued: 5n, oldestQueuedAge: { seconds: 90n } })] };
    case "resttest.v1.EchoResponse":
      return { request: req };
    default:
      return {};
  }
}

async function* streamResponse(method: DescMethodServerStreaming, req: Message, ctx: HandlerContext): AsyncIterable<Message> {
  const input = req as unknown as Record<string, unknown>;
  switch (method.name) {
    case "WatchTask": {
      const id = String(input.taskId);
      if (id === "missing") throw new ConnectError("task missing not found", Code.NotFound);
      const event = (sequence: bigint) => create(TaskEventSchema, { taskId: id, sequence, event: { case: "log", value: { attempt: 1, line: `line ${sequence}` } } });
      if (id === "quiet") {
        await waitAbort(ctx);
        aborted.add(id);
        return;
      }
      yield event(1n);
      if (id === "hang") {
        await waitAbort(ctx);
        aborted.add(id);
        return;
      }
      yield event(2n);
      if (id === "boom") throw new ConnectError("upstream lost", Code.Unavailable);
      yield event(3n);
      return;
    }
    case "WatchConfig":
      for (const ns of input.namespaces as string[]) yield create(ConfigEventSchema, { type: 1, entry: { namespace: ns, revision: 9n } });
      return;
    case "WatchWorkers":
      yield create(WorkerEventSchema, { type: 1, worker: { id: "w-1", slots: 4 } });
      yield create(WorkerEventSchema, { type: 2, worker: { id: "w-2" } });
      return;
  }
}

function stubRoutes(services: readonly DescService[]): (router: ConnectRouter) => void {
  const record = (method: DescMethodUnary | DescMethodServerStreaming, req: Message, ctx: HandlerContext): void => {
    calls.push({ rpc: `${method.parent.typeName}.${method.name}`, request: toJson(method.input, req) as JsonObject, headers: new Headers(ctx.requestHeader) });
  };
  return (router) => {
    for (const service of services) {
      for (const m of service.methods) {
        if (m.methodKind === "unary") {
          // DescMethod is not a union on methodKind: the check above makes the cast true.
          const method = m as DescMethodUnary;
          router.rpc(method, async (req, ctx) => {
            record(method, req, ctx);
            const input = req as unknown as Record<string, unknown>;
            if (typeof input.taskId === "string") maybeFail(input.taskId);
            if (input.taskId === "slow") await waitAbort(ctx);
            return unaryResponse(method, req);
          });
        } else if (m.methodKind === "server_streaming") {
          const method = m as DescMethodServerStreaming;
          router.rpc(method, async function* (req, ctx) {
            record(method, req, ctx);
            yield* streamResponse(method, req, ctx);
          });
        }
      }
    }
  };
}

/** Stands in for the gateway's auth: proves interceptors run for REST calls with the forwarded headers. */
const denyBadKey: Interceptor = (next) => async (req) => {
  if (req.header.get("authorization") === "Bearer bad") throw new ConnectError("invalid API key", Code.Unauthenticated);
  return next(req);
};

// --- the server under test -------------------------------------------------------------------

const ECHO = echoService();
const SERVICES = [...PUBLIC, ECHO];
let server: RpcServer;
let base: string;

beforeAll(async () => {
  const routes = stubRoutes(SERVICES);
  const transport = createRouterTransport(routes, { router: { interceptors: [denyBadKey] } });
  const rest = createRestHandler({
    services: SERVICES,
    transport,
    logger: silentLogger(),
    maxBodyBytes: MAX_BODY,
    cors: { allowedOrigins: ["https://app.example.com"] },
    streamHeadWaitMs: 200,
  });
  server = await startServer({
    name: "gateway",
    port: 0,
    routes,
    files: [
      file_taskmesh_v1_task_service,
      file_taskmesh_v1_cluster_service,
      file_taskmesh_v1_api_key_service,
      file_taskmesh_v1_config_service,
      file_taskmesh_v1_schedule_service,
    ],
    registry: createRegistry("gateway"),
    logger: silentLogger(),
    httpFallback: rest,
    interceptors: [denyBadKey],
  });
  base = `http://${server.address}`;
});

afterAll(async () => {
  await server.close();
});

interface Sent {
  status: number;
  headers: Headers;
  text: string;
}

async function send(method: string, path: string, opts: { body?: string | JsonValue; headers?: Record<string, string> } = {}): Promise<Sent> {
  const body = opts.body === undefined ? undefined : typeof opts.body === "string" ? opts.body : JSON.stringify(opts.body);
  const res = await fetch(base + path, {
    method,
    headers: { ...(body === undefined ? {} : { "content-type": "application/json" }), ...opts.headers },
    ...(body === undefined ? {} : { body }),
  });
  return { status: res.status, headers: res.headers, text: await res.text() };
}

function json(sent: Sent): JsonObject {
  return JSON.parse(sent.text) as JsonObject;
}

/** curl with HTTP/2 prior knowledge: body, then status and HTTP version on the last line. */
async function curlH2(args: string[]): Promise<{ body: string; status: number; version: string }> {
  const { stdout } = await run("curl", ["-sS", "--http2-prior-knowledge", "-w", "\n%{http_code} %{http_version}", ...args], { timeout: 20_000 });
  const cut = stdout.lastIndexOf("\n");
  const [status, version] = stdout.slice(cut + 1).split(" ");
  return { body: stdout.slice(0, cut), status: Number(status), version: version ?? "" };
}

// --- every route of every public service ------------------------------------------------------

interface RouteCase {
  rpc: string;
  method: string;
  path: string;
  body?: string | JsonValue;
  /** The request message the implementation must receive, in protobuf JSON. */
  expected: JsonObject;
}

const T = "taskmesh.v1.TaskService";
const CL = "taskmesh.v1.ClusterService";
const AK = "taskmesh.v1.ApiKeyService";
const CF = "taskmesh.v1.ConfigService";
const SC = "taskmesh.v1.ScheduleService";

const ROUTES: RouteCase[] = [
  {
    rpc: `${T}.SubmitTask`,
    method: "POST",
    path: "/v1/tasks",
    // lowerCamelCase and original proto names are both accepted.
    body: {
      type: "email",
      payload: { to: "a@example.com", n: 1 },
      queue: "mail",
      priority: "PRIORITY_HIGH",
      max_attempts: 3,
      backoff: { initial: "1s", multiplier: 2 },
      timeout: "30s",
      runAt: "2030-01-01T00:00:00Z",
      idempotency_key: "k-1",
      labels: { team: "a" },
    },
    expected: {
      type: "email",
      payload: { to: "a@example.com", n: 1 },
      queue: "mail",
      priority: "PRIORITY_HIGH",
      maxAttempts: 3,
      backoff: { initial: "1s", multiplier: 2 },
      timeout: "30s",
      runAt: "2030-01-01T00:00:00Z",
      idempotencyKey: "k-1",
      labels: { team: "a" },
    },
  },
  { rpc: `${T}.SubmitTasks`, method: "POST", path: "/v1/tasks:batch", body: { tasks: [{ type: "a" }, { type: "b" }] }, expected: { tasks: [{ type: "a" }, { type: "b" }] } },
  { rpc: `${T}.GetTask`, method: "GET", path: "/v1/tasks/t-1", expected: { taskId: "t-1" } },
  {
    rpc: `${T}.ListTasks`,
    method: "GET",
    path: "/v1/tasks?status=TASK_STATUS_FAILED&type=email&queue=q&label=team%3Da&page_size=10&pageToken=tok",
    expected: { status: "TASK_STATUS_FAILED", type: "email", queue: "q", label: "team=a", pageSize: 10, pageToken: "tok" },
  },
  { rpc: `${T}.ListTasks`, method: "GET", path: "/v1/tasks?status=6", expected: { status: "TASK_STATUS_FAILED" } },
  { rpc: `${T}.CancelTask`, method: "POST", path: "/v1/tasks/t-1:cancel", body: { reason: "no longer needed" }, expected: { taskId: "t-1", reason: "no longer needed" } },
  { rpc: `${T}.CancelTask`, method: "POST", path: "/v1/tasks/t-2:cancel", expected: { taskId: "t-2" } },
  { rpc: `${T}.CancelTask`, method: "POST", path: "/v1/tasks/t-3:cancel", body: { task_id: "t-3" }, expected: { taskId: "t-3" } },
  { rpc: `${T}.WatchTask`, method: "GET", path: "/v1/tasks/t-1:watch", expected: { taskId: "t-1" } },
  { rpc: `${T}.RetryTask`, method: "POST", path: "/v1/tasks/t-1:retry", body: {}, expected: { taskId: "t-1" } },
  { rpc: `${CL}.ListWorkers`, method: "GET", path: "/v1/cluster/workers", expected: {} },
  { rpc: `${CL}.GetClusterStatus`, method: "GET", path: "/v1/cluster/status", expected: {} },
  { rpc: `${CL}.WatchWorkers`, method: "GET", path: "/v1/cluster/workers:watch", expected: {} },
  { rpc: `${CL}.PauseQueue`, method: "POST", path: "/v1/cluster/queues/emails:pause", body: {}, expected: { queue: "emails" } },
  { rpc: `${CL}.ResumeQueue`, method: "POST", path: "/v1/cluster/queues/emails:resume", expected: { queue: "emails" } },
  {
    rpc: `${AK}.CreateApiKey`,
    method: "POST",
    path: "/v1/apikeys",
    body: { tenant: "acme", scopes: ["tasks:read", "admin"], description: "ci" },
    expected: { tenant: "acme", scopes: ["tasks:read", "admin"], description: "ci" },
  },
  { rpc: `${AK}.ListApiKeys`, method: "GET", path: "/v1/apikeys", expected: {} },
  { rpc: `${AK}.RevokeApiKey`, method: "DELETE", path: "/v1/apikeys/k-1", expected: { id: "k-1" } },
  { rpc: `${CF}.GetConfig`, method: "GET", path: "/v1/config/worker/w-1", expected: { namespace: "worker/w-1" } },
  { rpc: `${CF}.GetConfig`, method: "GET", path: "/v1/config/team%20a/x%2Fy", expected: { namespace: "team a/x%2Fy" } },
  {
    rpc: `${CF}.PutConfig`,
    method: "PUT",
    path: "/v1/config/worker/w-1",
    body: { value: { slots: 4 }, expectedRevision: "7", gray_labels: { canary: "true" } },
    expected: { namespace: "worker/w-1", value: { slots: 4 }, expectedRevision: "7", grayLabels: { canary: "true" } },
  },
  { rpc: `${CF}.DeleteConfig`, method: "DELETE", path: "/v1/config/gateway?expected_revision=3", expected: { namespace: "gateway", expectedRevision: "3" } },
  { rpc: `${CF}.DeleteConfig`, method: "DELETE", path: "/v1/config/gateway?expectedRevision=0", expected: { namespace: "gateway", expectedRevision: "0" } },
  { rpc: `${CF}.ListConfigs`, method: "GET", path: "/v1/config?prefix=worker%2F", expected: { prefix: "worker/" } },
  { rpc: `${CF}.WatchConfig`, method: "GET", path: "/v1/config:watch?namespaces=a&namespaces=b&from_revision=5", expected: { namespaces: ["a", "b"], fromRevision: "5" } },
  { rpc: `${CF}.GetConfigHistory`, method: "GET", path: "/v1/config/worker/w-1:history", expected: { namespace: "worker/w-1" } },
  { rpc: `${CF}.RollbackConfig`, method: "POST", path: "/v1/config/worker/w-1:rollback", body: { toRevision: 4 }, expected: { namespace: "worker/w-1", toRevision: "4" } },
  { rpc: `${CF}.PromoteGrayConfig`, method: "POST", path: "/v1/config/scheduler:promote", expected: { namespace: "scheduler" } },
  { rpc: `${CF}.AbandonGrayConfig`, method: "POST", path: "/v1/config/scheduler:abandon", body: {}, expected: { namespace: "scheduler" } },
  {
    rpc: `${SC}.CreateSchedule`,
    method: "POST",
    path: "/v1/schedules",
    body: { cron: "*/5 * * * *", timeZone: "Europe/Paris", task: { type: "noop" }, schedule_id: "s-1" },
    expected: { cron: "*/5 * * * *", timeZone: "Europe/Paris", task: { type: "noop" }, scheduleId: "s-1" },
  },
  { rpc: `${SC}.CreateSchedule`, method: "POST", path: "/v1/schedules", body: { interval: "90s", task: { type: "noop" } }, expected: { interval: "90s", task: { type: "noop" } } },
  { rpc: `${SC}.ListSchedules`, method: "GET", path: "/v1/schedules?pageSize=5&page_token=x", expected: { pageSize: 5, pageToken: "x" } },
  { rpc: `${SC}.GetSchedule`, method: "GET", path: "/v1/schedules/s-1", expected: { scheduleId: "s-1" } },
  { rpc: `${SC}.DeleteSchedule`, method: "DELETE", path: "/v1/schedules/s-1", expected: { scheduleId: "s-1" } },
  { rpc: `${SC}.PauseSchedule`, method: "POST", path: "/v1/schedules/s-1:pause", expected: { scheduleId: "s-1" } },
  { rpc: `${SC}.ResumeSchedule`, method: "POST", path: "/v1/schedules/s-1:resume", body: {}, expected: { scheduleId: "s-1" } },
];

describe("REST transcoding of every public route", () => {
  it("covers every annotated method of every public service", () => {
    const annotated = restBindings(PUBLIC).map((b) => `${b.service.typeName}.${b.method.name}`);
    expect(new Set(ROUTES.map((r) => r.rpc))).toEqual(new Set(annotated));
  });

  it.each(ROUTES.map((r) => [`${r.method} ${r.path}`, r] as const))("%s", async (_name, route) => {
    const before = calls.length;
    const res = await send(route.method, route.path, route.body === undefined ? {} : { body: route.body });
    expect(res.status, res.text).toBe(200);
    const call = calls.slice(before).find((c) => c.rpc === route.rpc);
    expect(call?.request).toEqual(route.expected);
    const stream = restBindings(PUBLIC).find((b) => `${b.service.typeName}.${b.method.name}` === route.rpc)?.method.methodKind === "server_streaming";
    expect(res.headers.get("content-type")).toBe(stream ? "application/x-ndjson" : "application/json");
  });
});

describe("REST requests", () => {
  it("builds nested, repeated, enum, int64, double, bool and well-known-type fields from query parameters", async () => {
    const q = "count=9007199254740993&flag=true&status=3&tags=a&tags=b&ratio=0.25&wait=1.5s&at=2024-05-06T07:08:09Z&backoff.initial=2s&backoff.multiplier=1.5";
    const res = await send("GET", `/v1/parents/p%201/echo/e-1?${q}`);
    expect(res.status, res.text).toBe(200);
    // response_body "request": the body is the EchoRequest itself.
    expect(json(res)).toMatchObject({
      parent: { name: "p 1" },
      id: "e-1",
      count: "9007199254740993",
      flag: true,
      status: "TASK_STATUS_RUNNING",
      tags: ["a", "b"],
      ratio: 0.25,
      wait: "1.500s",
      at: "2024-05-06T07:08:09Z",
      backoff: { initial: "2s", multiplier: 1.5 },
    });
  });

  it("serves additional bindings, and a body bound to one field", async () => {
    const get = await send("GET", "/v1/echo/e-2?parent.name=p");
    expect(json(get)).toMatchObject({ id: "e-2", parent: { name: "p" } });
    const patch = await send("PATCH", "/v1/echo/e-3?tags=x", { body: { name: "p", note: "hello" } });
    expect(patch.status, patch.text).toBe(200);
    expect(json(patch)).toMatchObject({ id: "e-3", tags: ["x"], parent: { name: "p", note: "hello" } });
  });

  it("answers with protobuf JSON: lowerCamelCase, defaults included, int64 as strings, enum names, RFC 3339", async () => {
    const task = json(await send("GET", "/v1/tasks/t-9"));
    expect(task).toMatchObject({
      id: "t-9",
      status: "TASK_STATUS_RUNNING",
      attempt: 2,
      progress: 0,
      queue: "",
      labels: { team: "a" },
      createdAt: "2024-01-02T03:04:05.678Z",
    });
    const status = json(await send("GET", "/v1/cluster/status"));
    expect(status.queues).toEqual([expect.objectContaining({ name: "default", queued: "5", running: "0", oldestQueuedAge: "90s" })]);
  });

  it("forwards credentials, trace context and request ids, but not internal headers", async () => {
    await send("GET", "/v1/tasks/t-h", {
      headers: {
        authorization: "Bearer good",
        "x-api-key": "k",
        traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "x-request-id": "req-1",
        "x-taskmesh-tenant": "someone-else",
      },
    });
    const headers = lastCall(`${T}.GetTask`)?.headers;
    expect(headers?.get("authorization")).toBe("Bearer good");
    expect(headers?.get("x-api-key")).toBe("k");
    expect(headers?.get("traceparent")).toBe("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    expect(headers?.get("x-request-id")).toBe("req-1");
    expect(headers?.get("x-taskmesh-tenant")).toBeNull();
  });

  it("runs the router's interceptors: a rejected key is 401 with WWW-Authenticate", async () => {
    const res = await send("GET", "/v1/tasks/t-1", { headers: { authorization: "Bearer bad" } });
    expect(res.status).toBe(401);
    expect(res.headers.get("www-authenticate")).toContain("Bearer");
    expect(json(res)).toEqual({ code: Code.Unauthenticated, message: "invalid API key", details: [] });
  });

  it("applies grpc-timeout as the call's deadline", async () => {
    const res = await send("GET", "/v1/tasks/slow", { headers: { "grpc-timeout": "100m" } });
    expect(res.status).toBe(504);
    expect(json(res).code).toBe(Code.DeadlineExceeded);
  });

  it("serves the OpenAPI document", async () => {
    const res = await send("GET", "/openapi.json");
    expect(res.status).toBe(200);
    const doc = json(res);
    expect(doc.openapi).toBe("3.0.3");
    expect(Object.keys(doc.paths as JsonObject)).toContain("/v1/tasks/{task_id}:cancel");
  });

  it("keeps serving Connect RPCs on the same port", async () => {
    const client = createClient(TaskService, createConnectTransport({ baseUrl: base, httpVersion: "1.1" }));
    const task = await client.getTask({ taskId: "t-connect" });
    expect(task.id).toBe("t-connect");
  });
});

describe("REST errors", () => {
  it("answers 404 with a google.rpc.Status for unknown routes", async () => {
    const res = await send("GET", "/v2/nothing");
    expect(res.status).toBe(404);
    expect(res.headers.get("content-type")).toBe("application/json");
    expect(json(res)).toMatchObject({ code: Code.NotFound, details: [] });
  });

  it("answers 405 with Allow for a known path and the wrong method", async () => {
    const res = await send("DELETE", "/v1/tasks");
    expect(res.status).toBe(405);
    expect(res.headers.get("allow")).toBe("GET, POST, OPTIONS");
    expect(json(res).code).toBe(Code.Unimplemented);
    const verb = await send("GET", "/v1/tasks/t-1:cancel");
    expect(verb.status).toBe(405);
    expect(verb.headers.get("allow")).toBe("POST, OPTIONS");
  });

  it.each([
    ["an unknown query parameter", "GET", "/v1/tasks?bogus=1", undefined, '"bogus"'],
    ["a bad enum name", "GET", "/v1/tasks?status=NOPE", undefined, '"status"'],
    ["an unknown enum number", "GET", "/v1/tasks?status=42", undefined, '"status"'],
    ["a bad number", "GET", "/v1/tasks?page_size=ten", undefined, '"page_size"'],
    ["a singular parameter given twice", "GET", "/v1/tasks?page_size=1&page_size=2", undefined, "more than once"],
    ["a query parameter for a path-bound field", "GET", "/v1/tasks/t-1?task_id=x", undefined, "bound to the path"],
    ["a query parameter with body *", "POST", "/v1/tasks?type=x", {}, "bound to the request body"],
    ["a map field in the query", "GET", "/v1/echo/e?labels=a", undefined, "map fields"],
    ["a bad duration", "GET", "/v1/echo/e?wait=soon", undefined, '"wait"'],
    ["malformed JSON", "POST", "/v1/tasks", "{nope", "malformed JSON"],
    ["an unknown body field", "POST", "/v1/tasks", { type: "x", typo: 1 }, "typo"],
    ["a body of the wrong shape", "POST", "/v1/tasks", "[1, 2]", "invalid request body"],
    ["a body contradicting the path", "POST", "/v1/tasks/t-1:cancel", { taskId: "t-2" }, "the path says"],
    ["malformed percent-encoding", "GET", "/v1/tasks/%zz", undefined, "percent-encoding"],
  ] as const)("answers 400 INVALID_ARGUMENT for %s", async (_what, method, path, body, message) => {
    const res = await send(method, path, body === undefined ? {} : { body });
    expect(res.status, res.text).toBe(400);
    const status = json(res);
    expect(status.code).toBe(Code.InvalidArgument);
    expect(status.message).toContain(message);
    expect(status.details).toEqual([]);
  });

  it("answers 413 for a body over the limit, declared or streamed", async () => {
    const big = JSON.stringify({ type: "x", payload: { blob: "x".repeat(MAX_BODY) } });
    const declared = await send("POST", "/v1/tasks", { body: big });
    expect(declared.status).toBe(413);
    expect(json(declared)).toMatchObject({ code: Code.InvalidArgument });

    const chunks = new TextEncoder().encode(big);
    const streamed = await fetch(`${base}/v1/tasks`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: new ReadableStream({
        start(controller) {
          for (let i = 0; i < chunks.length; i += 16 * 1024) controller.enqueue(chunks.subarray(i, i + 16 * 1024));
          controller.close();
        },
      }),
      duplex: "half",
    } as RequestInit);
    expect(streamed.status).toBe(413);
    expect(((await streamed.json()) as JsonObject).code).toBe(Code.InvalidArgument);
    // The server is still fine afterwards.
    expect((await send("GET", "/v1/tasks/t-after")).status).toBe(200);
  });

  const STATUS_OF: [Code, number][] = [
    [Code.Canceled, 499],
    [Code.Unknown, 500],
    [Code.InvalidArgument, 400],
    [Code.DeadlineExceeded, 504],
    [Code.NotFound, 404],
    [Code.AlreadyExists, 409],
    [Code.PermissionDenied, 403],
    [Code.ResourceExhausted, 429],
    [Code.FailedPrecondition, 400],
    [Code.Aborted, 409],
    [Code.OutOfRange, 400],
    [Code.Unimplemented, 501],
    [Code.Internal, 500],
    [Code.Unavailable, 503],
    [Code.DataLoss, 500],
    [Code.Unauthenticated, 401],
  ];

  it.each(STATUS_OF)("maps code %i to HTTP %i with a google.rpc.Status body", async (code, status) => {
    const res = await send("GET", `/v1/tasks/fail-${code}`);
    expect(res.status).toBe(status);
    expect(res.headers.get("content-type")).toBe("application/json");
    expect(json(res)).toEqual({ code, message: `stub failure ${code}`, details: [] });
  });

  it("renders error details as google.protobuf.Any JSON", async () => {
    const res = await send("GET", "/v1/tasks/fail-3-badrequest");
    expect(res.status).toBe(400);
    expect(json(res)).toEqual({
      code: 3,
      message: "bad task id",
      details: [{ "@type": "type.googleapis.com/google.rpc.BadRequest", fieldViolations: [{ field: "task_id", description: "must be a ULID" }] }],
    });
  });

  it("renders a detail of an unknown type from the JSON the server attached", async () => {
    const res = await send("GET", "/v1/tasks/fail-9-wkt");
    expect(res.status).toBe(400);
    expect(json(res).details).toEqual([{ "@type": "type.googleapis.com/google.protobuf.StringValue", value: "x" }]);
  });

  it("inverts the status mapping for replies without a status body", () => {
    expect(httpStatusFromCode(0)).toBe(200);
    for (const [code, status] of STATUS_OF) {
      // 400, 409 and 500 carry several codes: the inverse picks one of them.
      if ([400, 409, 500].includes(status)) expect(httpStatusFromCode(codeFromHttpStatus(status))).toBe(status);
      else expect(codeFromHttpStatus(status)).toBe(code);
    }
    expect(codeFromHttpStatus(204)).toBe(0);
    expect(codeFromHttpStatus(413)).toBe(Code.InvalidArgument);
    expect(codeFromHttpStatus(418)).toBe(Code.FailedPrecondition);
    expect(codeFromHttpStatus(502)).toBe(Code.Unavailable);
    expect(codeFromHttpStatus(599)).toBe(Code.Unknown);
  });

  it("sets Retry-After from RetryInfo or from the call's retry-after header", async () => {
    const info = await send("GET", "/v1/tasks/fail-8-retry");
    expect(info.status).toBe(429);
    expect(info.headers.get("retry-after")).toBe("3");
    expect(json(info).details).toEqual([{ "@type": "type.googleapis.com/google.rpc.RetryInfo", retryDelay: "2.500s" }]);
    const header = await send("GET", "/v1/tasks/fail-14-header");
    expect(header.status).toBe(503);
    expect(header.headers.get("retry-after")).toBe("7");
  });
});

describe("REST server streams", () => {
  it("streams newline-delimited JSON to the end", async () => {
    const res = await send("GET", "/v1/tasks/t-1:watch");
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("application/x-ndjson");
    const lines = res.text.trimEnd().split("\n").map((l) => JSON.parse(l) as JsonObject);
    expect(lines.map((l) => (l.result as JsonObject).sequence)).toEqual(["1", "2", "3"]);
    expect(lines[0]).toMatchObject({ result: { taskId: "t-1", log: { attempt: 1, line: "line 1" } } });
  });

  it("streams Server-Sent Events when asked", async () => {
    const res = await send("GET", "/v1/cluster/workers:watch", { headers: { accept: "text/event-stream" } });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("text/event-stream; charset=utf-8");
    const events = res.text.split("\n\n").filter((e) => e !== "");
    expect(events.map((e) => JSON.parse(e.replace(/^data: /, "")) as JsonObject)).toEqual([
      expect.objectContaining({ type: "TYPE_PUT", worker: expect.objectContaining({ id: "w-1", slots: 4 }) as unknown }),
      expect.objectContaining({ type: "TYPE_DELETE" }),
    ]);
  });

  it("ends with an error line carrying a google.rpc.Status when the stream fails", async () => {
    const res = await send("GET", "/v1/tasks/boom:watch");
    expect(res.status).toBe(200);
    const lines = res.text.trimEnd().split("\n").map((l) => JSON.parse(l) as JsonObject);
    expect(lines).toHaveLength(3);
    expect(lines[2]).toEqual({ error: { code: Code.Unavailable, message: "upstream lost", details: [] } });
  });

  it("ends with an SSE error event when the stream fails", async () => {
    const res = await send("GET", "/v1/tasks/boom:watch", { headers: { accept: "text/event-stream" } });
    const events = res.text.split("\n\n").filter((e) => e !== "");
    expect(events).toHaveLength(3);
    expect(events[2]).toBe(`event: error\ndata: ${JSON.stringify({ code: Code.Unavailable, message: "upstream lost", details: [] })}`);
  });

  it("answers an error before the first message with its HTTP status", async () => {
    const res = await send("GET", "/v1/tasks/missing:watch");
    expect(res.status).toBe(404);
    expect(json(res)).toEqual({ code: Code.NotFound, message: "task missing not found", details: [] });
  });

  it("sends the head of a silent stream after streamHeadWaitMs and cancels the call when the client leaves", async () => {
    const controller = new AbortController();
    const res = await fetch(`${base}/v1/tasks/quiet:watch`, { signal: controller.signal });
    expect(res.status).toBe(200);
    controller.abort();
    await waitFor(() => aborted.has("quiet"), { what: "the quiet stream's handler to see the abort" });
  });

  it("answers a client that half-closes after its request, and takes a half-close during a stream as leaving", async () => {
    const [host, port] = base.slice("http://".length).split(":") as [string, string];
    /** Sends a raw HTTP/1 request, shuts the sending side down, and reads until the server closes. */
    const halfClosed = (request: string) =>
      new Promise<string>((resolve, reject) => {
        const s = net.connect({ host, port: Number(port) }, () => s.end(request));
        let buf = "";
        s.on("data", (b) => (buf += b.toString()));
        s.on("close", () => resolve(buf));
        s.on("error", reject);
        s.setTimeout(5000, () => s.destroy(new Error("the server neither answered nor closed")));
      });
    const unary = await halfClosed("GET /v1/tasks/t-half HTTP/1.1\r\nHost: x\r\n\r\n");
    expect(unary).toMatch(/^HTTP\/1\.1 200 /);
    expect(unary).toContain('"id":"t-half"');
    // A silent watch: its head comes after streamHeadWaitMs, to a client already gone.
    aborted.delete("quiet");
    const watch = await halfClosed("GET /v1/tasks/quiet:watch HTTP/1.1\r\nHost: x\r\n\r\n");
    expect(watch).toMatch(/^(HTTP\/1\.1 200 |)/);
    await waitFor(() => aborted.has("quiet"), { what: "the half-closed stream's handler to see the abort" });
  });

  it("cancels the call when the client goes away mid-stream", async () => {
    const controller = new AbortController();
    const res = await fetch(`${base}/v1/tasks/hang:watch`, { signal: controller.signal });
    const reader = res.body?.getReader();
    const first = await reader?.read();
    expect(new TextDecoder().decode(first?.value)).toContain('"sequence":"1"');
    controller.abort();
    await waitFor(() => aborted.has("hang"), { what: "the stream handler to see the abort" });
  });
});

describe("REST over HTTP/2 (curl --http2-prior-knowledge)", () => {
  it("serves a unary call", async () => {
    const res = await curlH2([`${base}/v1/tasks/t-h2`]);
    expect(res.version).toBe("2");
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body)).toMatchObject({ id: "t-h2", status: "TASK_STATUS_RUNNING" });
  });

  it("serves a POST with a body, and errors", async () => {
    const res = await curlH2(["-X", "POST", "-H", "content-type: application/json", "-d", '{"reason":"h2"}', `${base}/v1/tasks/t-h2:cancel`]);
    expect(res.status).toBe(200);
    expect(lastCall(`${T}.CancelTask`)?.request).toEqual({ taskId: "t-h2", reason: "h2" });
    const err = await curlH2([`${base}/v1/tasks/fail-5`]);
    expect(err.status).toBe(404);
    expect(JSON.parse(err.body)).toEqual({ code: 5, message: "stub failure 5", details: [] });
  });

  it("streams NDJSON and SSE", async () => {
    const nd = await curlH2([`${base}/v1/config:watch?namespaces=x&namespaces=y`]);
    expect(nd.status).toBe(200);
    const lines = nd.body.trimEnd().split("\n").map((l) => JSON.parse(l) as { result: { entry: { namespace: string } } });
    expect(lines.map((l) => l.result.entry.namespace)).toEqual(["x", "y"]);
    const sse = await curlH2(["-H", "accept: text/event-stream", `${base}/v1/tasks/boom:watch`]);
    expect(sse.body).toContain("event: error\ndata: ");
  });
});

describe("CORS", () => {
  const origin = "https://app.example.com";

  it("answers a preflight from an allowed origin", async () => {
    const res = await send("OPTIONS", "/v1/tasks", {
      headers: { origin, "access-control-request-method": "POST", "access-control-request-headers": "authorization, content-type" },
    });
    expect(res.status).toBe(204);
    expect(res.headers.get("access-control-allow-origin")).toBe(origin);
    expect(res.headers.get("access-control-allow-methods")).toContain("POST");
    const allowed = res.headers.get("access-control-allow-headers") ?? "";
    for (const h of ["authorization", "x-api-key", "content-type", "connect-protocol-version", "grpc-timeout", "x-grpc-web", "x-user-agent"]) {
      expect(allowed).toContain(h);
    }
    expect(res.headers.get("vary")).toBe("Origin");
  });

  it("refuses a preflight from another origin", async () => {
    const res = await send("OPTIONS", "/v1/tasks", { headers: { origin: "https://evil.example.com", "access-control-request-method": "POST" } });
    expect(res.status).toBe(403);
    expect(res.headers.get("access-control-allow-origin")).toBeNull();
  });

  it("adds CORS headers to normal responses, errors included", async () => {
    const ok = await send("GET", "/v1/tasks/t-1", { headers: { origin } });
    expect(ok.headers.get("access-control-allow-origin")).toBe(origin);
    const exposed = ok.headers.get("access-control-expose-headers") ?? "";
    for (const h of ["grpc-status", "grpc-message", "retry-after"]) expect(exposed).toContain(h);
    const err = await send("GET", "/v1/tasks/fail-8-retry", { headers: { origin } });
    expect(err.headers.get("access-control-allow-origin")).toBe(origin);
    const other = await send("GET", "/v1/tasks/t-1", { headers: { origin: "https://evil.example.com" } });
    expect(other.headers.get("access-control-allow-origin")).toBeNull();
  });

  it("answers a plain OPTIONS with Allow", async () => {
    const res = await send("OPTIONS", "/v1/config/worker/w-1");
    expect(res.status).toBe(204);
    expect(res.headers.get("allow")).toBe("DELETE, GET, PUT, OPTIONS");
  });
});
