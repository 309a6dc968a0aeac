import { create, createFileRegistry, setExtension, type DescFile, type DescService, type JsonObject, type JsonValue } from "@bufbuild/protobuf";
import {
  FieldDescriptorProto_Label as Label,
  FieldDescriptorProto_Type as Type,
  FileDescriptorProtoSchema,
  MethodOptionsSchema,
  file_google_protobuf_duration,
} from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import { file_google_api_annotations, http } from "../../gen/google/api/annotations_pb.js";
import { HttpRuleSchema } from "../../gen/google/api/http_pb.js";
import { ApiKeyService } from "../../gen/taskmesh/v1/api_key_service_pb.js";
import { ClusterService } from "../../gen/taskmesh/v1/cluster_service_pb.js";
import { ConfigService } from "../../gen/taskmesh/v1/config_service_pb.js";
import { ScheduleService } from "../../gen/taskmesh/v1/schedule_service_pb.js";
import { file_taskmesh_v1_task } from "../../gen/taskmesh/v1/task_pb.js";
import { TaskService } from "../../gen/taskmesh/v1/task_service_pb.js";
import { openApiDocument } from "../../services/gateway/rest/openapi.js";
import { restBindings } from "../../services/gateway/rest/route-template.js";

const PUBLIC = [TaskService, ClusterService, ApiKeyService, ConfigService, ScheduleService];
const HTTP_METHODS = ["get", "put", "post", "delete", "patch", "options", "head", "trace"];

const obj = (v: JsonValue | undefined): JsonObject => {
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new Error(`not an object: ${JSON.stringify(v)}`);
  return v;
};
const arr = (v: JsonValue | undefined): JsonValue[] => {
  if (!Array.isArray(v)) throw new Error(`not an array: ${JSON.stringify(v)}`);
  return v;
};

/** Every `$ref` anywhere in a JSON value. */
function refs(v: JsonValue, out: string[] = []): string[] {
  if (Array.isArray(v)) for (const x of v) refs(x, out);
  else if (typeof v === "object" && v !== null) {
    for (const [k, x] of Object.entries(v)) {
      if (k === "$ref" && typeof x === "string") out.push(x);
      else refs(x, out);
    }
  }
  return out;
}

function operations(doc: JsonObject): [string, string, JsonObject][] {
  const out: [string, string, JsonObject][] = [];
  for (const [path, item] of Object.entries(obj(doc.paths))) {
    for (const [method, op] of Object.entries(obj(item))) out.push([path, method, obj(op)]);
  }
  return out;
}

function op(doc: JsonObject, path: string, method: string): JsonObject {
  return obj(obj(obj(doc.paths)[path])[method]);
}

function param(operation: JsonObject, name: string): JsonObject | undefined {
  return arr(operation.parameters).map(obj).find((p) => p.name === name);
}

function schema(doc: JsonObject, name: string): JsonObject {
  return obj(obj(obj(doc.components).schemas)[name]);
}

describe("openApiDocument", () => {
  const doc = openApiDocument(PUBLIC, { title: "taskmesh", version: "9.9.9", servers: [{ url: "http://localhost:8080" }] });

  it("has the OpenAPI 3.0 structure", () => {
    expect(doc.openapi).toBe("3.0.3");
    expect(doc.info).toEqual({ title: "taskmesh", version: "9.9.9" });
    expect(doc.servers).toEqual([{ url: "http://localhost:8080" }]);
    expect(Object.keys(obj(doc.components)).sort()).toEqual(["schemas", "securitySchemes"]);
    expect(JSON.parse(JSON.stringify(doc))).toEqual(doc);
    for (const [path, method, operation] of operations(doc)) {
      expect(path.startsWith("/")).toBe(true);
      expect(HTTP_METHODS).toContain(method);
      expect(typeof operation.operationId).toBe("string");
      const responses = obj(operation.responses);
      expect(Object.keys(responses).sort()).toEqual(["200", "default"]);
      for (const r of Object.values(responses)) expect(typeof obj(r).description).toBe("string");
      for (const p of arr(operation.parameters).map(obj)) {
        expect(["path", "query"]).toContain(p.in);
        expect(p.schema).toBeDefined();
        if (p.in === "path") expect(p.required).toBe(true);
      }
    }
  });

  it("has one operation per binding with unique operation ids", () => {
    const ops = operations(doc);
    expect(ops).toHaveLength(restBindings(PUBLIC).length);
    const ids = ops.map(([, , o]) => o.operationId);
    expect(new Set(ids).size).toBe(ids.length);
    expect(op(doc, "/v1/tasks/{task_id}:cancel", "post").operationId).toBe("TaskService_CancelTask");
  });

  it("declares every path variable as a path parameter and nothing else", () => {
    for (const [path, , operation] of operations(doc)) {
      const inPath = [...path.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]).sort();
      const declared = arr(operation.parameters).map(obj).filter((p) => p.in === "path").map((p) => p.name).sort();
      expect(declared).toEqual(inPath);
    }
  });

  it("resolves every $ref to a component schema", () => {
    const names = new Set(Object.keys(obj(obj(doc.components).schemas)));
    const all = refs(doc);
    expect(all.length).toBeGreaterThan(20);
    for (const ref of all) {
      expect(ref.startsWith("#/components/schemas/")).toBe(true);
      expect(names.has(ref.slice("#/components/schemas/".length))).toBe(true);
    }
  });

  it("describes a GET route's path and query parameters", () => {
    const get = op(doc, "/v1/tasks/{task_id}", "get");
    expect(arr(get.parameters)).toEqual([{ name: "task_id", in: "path", required: true, schema: { type: "string" } }]);
    expect(get.requestBody).toBeUndefined();
    expect(obj(obj(obj(get.responses)["200"]).content)["application/json"]).toEqual({ schema: { $ref: "#/components/schemas/taskmesh.v1.Task" } });

    const list = op(doc, "/v1/tasks", "get");
    expect(arr(list.parameters).map((p) => obj(p).name)).toEqual(["status", "type", "queue", "label", "pageSize", "pageToken"]);
    expect(param(list, "status")?.schema).toEqual({ $ref: "#/components/schemas/taskmesh.v1.TaskStatus" });
    expect(param(list, "pageSize")?.schema).toEqual({ type: "integer", format: "int32" });

    const watch = op(doc, "/v1/config:watch", "get");
    expect(param(watch, "namespaces")).toMatchObject({ in: "query", schema: { type: "array", items: { type: "string" } }, explode: true });
    expect(param(watch, "fromRevision")?.schema).toEqual({ type: "string", format: "int64" });

    const del = op(doc, "/v1/config/{namespace}", "delete");
    expect(param(del, "namespace")?.description).toContain("/");
    expect(param(del, "expectedRevision")?.in).toBe("query");
  });

  it("describes request bodies without the fields the path binds", () => {
    const submit = op(doc, "/v1/tasks", "post");
    expect(submit.requestBody).toEqual({
      required: true,
      content: { "application/json": { schema: { $ref: "#/components/schemas/taskmesh.v1.SubmitTaskRequest" } } },
    });
    expect(arr(submit.parameters)).toEqual([]);
    const cancel = op(doc, "/v1/tasks/{task_id}:cancel", "post");
    const body = obj(obj(obj(obj(cancel.requestBody).content)["application/json"]).schema);
    expect(Object.keys(obj(body.properties))).toEqual(["reason"]);
  });

  it("describes server streams as NDJSON and SSE", () => {
    const ok = obj(obj(op(doc, "/v1/tasks/{task_id}:watch", "get").responses)["200"]);
    const content = obj(ok.content);
    expect(Object.keys(content).sort()).toEqual(["application/x-ndjson", "text/event-stream"]);
    expect(obj(obj(content["application/x-ndjson"]).schema).properties).toEqual({
      result: { $ref: "#/components/schemas/taskmesh.v1.TaskEvent" },
      error: { $ref: "#/components/schemas/google.rpc.Status" },
    });
  });

  it("maps messages, enums and well-known types by the protobuf JSON rules", () => {
    const task = obj(schema(doc, "taskmesh.v1.Task").properties);
    expect(task.id).toEqual({ type: "string" });
    expect(task.createdAt).toMatchObject({ type: "string", format: "date-time" });
    expect(task.timeout).toMatchObject({ type: "string", pattern: "^-?[0-9]+(\\.[0-9]{1,9})?s$" });
    expect(task.payload).toEqual({ type: "object", additionalProperties: true });
    expect(task.labels).toEqual({ type: "object", additionalProperties: { type: "string" } });
    expect(task.status).toEqual({ $ref: "#/components/schemas/taskmesh.v1.TaskStatus" });
    expect(task.backoff).toEqual({ $ref: "#/components/schemas/taskmesh.v1.Backoff" });
    expect(schema(doc, "taskmesh.v1.TaskStatus")).toMatchObject({ type: "string", enum: expect.arrayContaining(["TASK_STATUS_QUEUED", "TASK_STATUS_FAILED"]) as unknown });
    expect(obj(schema(doc, "taskmesh.v1.QueueStats").properties).queued).toEqual({ type: "string", format: "int64" });
    expect(obj(schema(doc, "taskmesh.v1.Backoff").properties).multiplier).toEqual({ type: "number", format: "double" });
    expect(schema(doc, "taskmesh.v1.Schedule").description).toContain("oneof spec");
    expect(schema(doc, "google.rpc.Status")).toMatchObject({ type: "object", required: ["code", "message"] });
  });

  it("declares bearer and x-api-key security", () => {
    expect(obj(obj(doc.components).securitySchemes)).toEqual({
      bearerAuth: expect.objectContaining({ type: "http", scheme: "bearer" }) as unknown,
      apiKeyAuth: { type: "apiKey", in: "header", name: "x-api-key" },
    });
    expect(doc.security).toEqual([{ bearerAuth: [] }, { apiKeyAuth: [] }]);
  });

  it("flattens nested query fields, keeps nested path variables and names additional bindings", () => {
    const doc2 = openApiDocument([nestedService()], { title: "t", version: "1" });
    const get = op(doc2, "/v1/{parent.name}/items", "get");
    expect(get.operationId).toBe("Svc_List");
    const names = arr(get.parameters).map((p) => obj(p).name);
    expect(names).toEqual(["parent.name", "parent.wait", "pageSize"]);
    expect(param(get, "parent.wait")?.schema).toMatchObject({ type: "string", format: "google-duration" });
    expect(op(doc2, "/v1/items", "get").operationId).toBe("Svc_List_2");
  });
});

/** `Parent { string name = 1; Duration wait = 2; }`, `Req { Parent parent = 1; int32 page_size = 2; }`. */
function nestedService(): DescService {
  const options = create(MethodOptionsSchema);
  setExtension(
    options,
    http,
    create(HttpRuleSchema, {
      pattern: { case: "get", value: "/v1/{parent.name}/items" },
      additionalBindings: [create(HttpRuleSchema, { pattern: { case: "get", value: "/v1/items" } })],
    }),
  );
  const field = (name: string, number: number, jsonName: string, type: Type, typeName?: string) => ({
    name,
    number,
    jsonName,
    type,
    label: Label.OPTIONAL,
    ...(typeName === undefined ? {} : { typeName }),
  });
  const file = create(FileDescriptorProtoSchema, {
    name: "oa_test.proto",
    package: "oatest",
    syntax: "proto3",
    dependency: ["google/api/annotations.proto", "google/protobuf/duration.proto", "taskmesh/v1/task.proto"],
    messageType: [
      { name: "Parent", field: [field("name", 1, "name", Type.STRING), field("wait", 2, "wait", Type.MESSAGE, ".google.protobuf.Duration")] },
      { name: "Req", field: [field("parent", 1, "parent", Type.MESSAGE, ".oatest.Parent"), field("page_size", 2, "pageSize", Type.INT32)] },
    ],
    service: [{ name: "Svc", method: [{ name: "List", inputType: ".oatest.Req", outputType: ".taskmesh.v1.Task", options }] }],
  });
  const files: Record<string, DescFile> = {
    "google/api/annotations.proto": file_google_api_annotations,
    "google/protobuf/duration.proto": file_google_protobuf_duration,
    "taskmesh/v1/task.proto": file_taskmesh_v1_task,
  };
  const svc = createFileRegistry(file, (name) => files[name]).getService("oatest.Svc");
  if (svc === undefined) throw new Error("no service");
  return svc;
}
