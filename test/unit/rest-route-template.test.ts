import { create, createFileRegistry, setExtension, type DescFile, type DescService, type MessageInitShape } from "@bufbuild/protobuf";
import {
  FieldDescriptorProto_Label as Label,
  FieldDescriptorProto_Type as Type,
  FileDescriptorProtoSchema,
  MethodOptionsSchema,
} from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import { file_google_api_annotations, http } from "../../gen/google/api/annotations_pb.js";
import { HttpRuleSchema } from "../../gen/google/api/http_pb.js";
import { ApiKeyService } from "../../gen/taskmesh/v1/api_key_service_pb.js";
import { ClusterService } from "../../gen/taskmesh/v1/cluster_service_pb.js";
import { ConfigService } from "../../gen/taskmesh/v1/config_service_pb.js";
import { ScheduleService } from "../../gen/taskmesh/v1/schedule_service_pb.js";
import { TaskService } from "../../gen/taskmesh/v1/task_service_pb.js";
import {
  PathDecodeError,
  RestRouter,
  TemplateError,
  matchPathTemplate,
  parsePathTemplate,
  restBindings,
} from "../../services/gateway/rest/route-template.js";

const PUBLIC = [TaskService, ClusterService, ApiKeyService, ConfigService, ScheduleService];

function match(template: string, path: string): Record<string, string> | undefined {
  const m = matchPathTemplate(parsePathTemplate(template), path);
  return m === undefined ? undefined : Object.fromEntries(m);
}

/**
 * A one-method service built at run time (request `Req { string id = 1; Inner inner = 2;
 * repeated string tags = 3; }`, `Inner { string name = 1; }`) with the given http rule.
 */
function serviceWith(rule: MessageInitShape<typeof HttpRuleSchema>, opts: { clientStreaming?: boolean } = {}): DescService {
  const options = create(MethodOptionsSchema);
  setExtension(options, http, create(HttpRuleSchema, rule));
  const str = (name: string, number: number, label = Label.OPTIONAL) => ({ name, number, jsonName: name, type: Type.STRING, label });
  const file = create(FileDescriptorProtoSchema, {
    name: "rt_test.proto",
    package: "rttest",
    syntax: "proto3",
    dependency: ["google/api/annotations.proto"],
    messageType: [
      { name: "Inner", field: [str("name", 1)] },
      {
        name: "Req",
        field: [
          str("id", 1),
          { name: "inner", number: 2, jsonName: "inner", type: Type.MESSAGE, typeName: ".rttest.Inner", label: Label.OPTIONAL },
          str("tags", 3, Label.REPEATED),
        ],
      },
    ],
    service: [
      {
        name: "Svc",
        method: [{ name: "Do", inputType: ".rttest.Req", outputType: ".rttest.Req", options, clientStreaming: opts.clientStreaming ?? false }],
      },
    ],
  });
  const files: Record<string, DescFile> = { "google/api/annotations.proto": file_google_api_annotations };
  const svc = createFileRegistry(file, (name) => files[name]).getService("rttest.Svc");
  if (svc === undefined) throw new Error("no service");
  return svc;
}

describe("parsePathTemplate", () => {
  it("parses literals, variables, wildcards and a verb", () => {
    const t = parsePathTemplate("/v1/tasks/{task_id}:cancel");
    expect(t.segments).toEqual([{ kind: "literal", value: "v1" }, { kind: "literal", value: "tasks" }, { kind: "wildcard" }]);
    expect(t.variables).toEqual([{ fieldPath: ["task_id"], start: 2, end: 3, multiSegment: false }]);
    expect(t.verb).toBe("cancel");
  });

  it("parses a verb right after a literal", () => {
    const t = parsePathTemplate("/v1/tasks:batch");
    expect(t.segments.map((s) => (s.kind === "literal" ? s.value : s.kind))).toEqual(["v1", "tasks"]);
    expect(t.verb).toBe("batch");
  });

  it("parses a multi-segment variable, nested field paths and sub-templates", () => {
    expect(parsePathTemplate("/v1/config/{namespace=**}:history").variables).toEqual([
      { fieldPath: ["namespace"], start: 2, end: 3, multiSegment: true },
    ]);
    expect(parsePathTemplate("/v1/{parent.name}/items").variables[0]?.fieldPath).toEqual(["parent", "name"]);
    const t = parsePathTemplate("/v1/{name=shelves/*/books/*}");
    expect(t.variables).toEqual([{ fieldPath: ["name"], start: 1, end: 5, multiSegment: true }]);
    expect(parsePathTemplate("/v1/{id=*}").variables[0]?.multiSegment).toBe(false);
  });

  it.each([
    ["v1/tasks", "must start with /"],
    ["/v1/{a{b}}", "nested"],
    ["/v1/{a", "unbalanced"],
    ["/v1/**/x", "** must be the last segment"],
    ["/v1/{1bad}", "bad field path"],
    ["/v1/a b", "bad segment"],
    ["/v1/{id}/{id}", "bound twice"],
  ])("rejects %s", (source, why) => {
    expect(() => parsePathTemplate(source)).toThrow(TemplateError);
    expect(() => parsePathTemplate(source)).toThrow(why);
  });
});

describe("matchPathTemplate", () => {
  it("matches literals and single-segment variables", () => {
    expect(match("/v1/tasks", "/v1/tasks")).toEqual({});
    expect(match("/v1/tasks/{task_id}", "/v1/tasks/t-1")).toEqual({ task_id: "t-1" });
    expect(match("/v1/tasks/{task_id}", "/v1/tasks/t-1/x")).toBeUndefined();
    expect(match("/v1/tasks/{task_id}", "/v1/other/t-1")).toBeUndefined();
  });

  it("matches ** across segments and keeps the slashes", () => {
    expect(match("/v1/config/{namespace=**}", "/v1/config/worker/w-1")).toEqual({ namespace: "worker/w-1" });
    expect(match("/v1/config/{namespace=**}", "/v1/config/gateway")).toEqual({ namespace: "gateway" });
    // At least one segment: an empty namespace never reaches a handler.
    expect(match("/v1/config/{namespace=**}", "/v1/config")).toBeUndefined();
    expect(match("/v1/config/{namespace=**}", "/v1/config/")).toBeUndefined();
    expect(match("/v1/config/{namespace=**}", "/v1/config/a//b")).toBeUndefined();
  });

  it("matches verbs only as a suffix of the last segment", () => {
    expect(match("/v1/tasks/{task_id}:cancel", "/v1/tasks/t-1:cancel")).toEqual({ task_id: "t-1" });
    expect(match("/v1/tasks/{task_id}:cancel", "/v1/tasks/t-1")).toBeUndefined();
    expect(match("/v1/tasks/{task_id}:cancel", "/v1/tasks/:cancel")).toBeUndefined();
    expect(match("/v1/config/{namespace=**}:history", "/v1/config/worker/w-1:history")).toEqual({ namespace: "worker/w-1" });
    // Without a verb in the template the colon is part of the value.
    expect(match("/v1/tasks/{task_id}", "/v1/tasks/a:b")).toEqual({ task_id: "a:b" });
  });

  it("binds nested field paths and sub-templates", () => {
    expect(match("/v1/{parent.name}/items", "/v1/p1/items")).toEqual({ "parent.name": "p1" });
    expect(match("/v1/{name=shelves/*/books/*}", "/v1/shelves/s1/books/b2")).toEqual({ name: "shelves/s1/books/b2" });
    expect(match("/v1/{name=shelves/*/books/*}", "/v1/shelves/s1/cds/b2")).toBeUndefined();
  });

  it("percent-decodes captures, keeping reserved escapes inside multi-segment ones", () => {
    expect(match("/v1/tasks/{task_id}", "/v1/tasks/a%20b%2Fc%C3%A9")).toEqual({ task_id: "a b/cé" });
    expect(match("/v1/config/{namespace=**}", "/v1/config/team%20a/x%2Fy%3Az")).toEqual({ namespace: "team a/x%2Fy%3Az" });
    expect(() => match("/v1/tasks/{task_id}", "/v1/tasks/%zz")).toThrow(PathDecodeError);
  });
});

describe("restBindings", () => {
  it("reads every google.api.http annotation of the public services", () => {
    const bindings = restBindings(PUBLIC);
    expect(bindings).toHaveLength(30);
    const byRpc = new Map(bindings.map((b) => [`${b.service.name}.${b.method.name}`, b]));
    const cancel = byRpc.get("TaskService.CancelTask");
    expect(cancel?.httpMethod).toBe("POST");
    expect(cancel?.body).toBe("*");
    expect(cancel?.pathFields.map((p) => p.fields.map((f) => f.name))).toEqual([["task_id"]]);
    expect(byRpc.get("ConfigService.PutConfig")?.httpMethod).toBe("PUT");
    expect(byRpc.get("ApiKeyService.RevokeApiKey")?.httpMethod).toBe("DELETE");
    expect(byRpc.get("TaskService.ListTasks")?.body).toBe("");
  });

  it("reads additional bindings, body fields and response_body", () => {
    const svc = serviceWith({
      pattern: { case: "patch", value: "/v1/{inner.name}/req" },
      body: "tags",
      responseBody: "inner",
      additionalBindings: [create(HttpRuleSchema, { pattern: { case: "custom", value: { kind: "search", path: "/v1/req" } } })],
    });
    const [main, extra] = restBindings([svc]);
    expect(main?.httpMethod).toBe("PATCH");
    expect(main?.bodyField?.name).toBe("tags");
    expect(main?.responseBodyField?.name).toBe("inner");
    expect(main?.pathFields[0]?.fields.map((f) => f.name)).toEqual(["inner", "name"]);
    expect(extra?.httpMethod).toBe("SEARCH");
    expect(extra?.bindingIndex).toBe(1);
  });

  it.each([
    ["a path variable naming no field", { pattern: { case: "get", value: "/v1/{nope}" } }, "no field nope"],
    ["a repeated path variable", { pattern: { case: "get", value: "/v1/{tags}" } }, "singular scalar or enum"],
    ["a message path variable", { pattern: { case: "get", value: "/v1/{inner}" } }, "singular scalar or enum"],
    ["a body naming no field", { pattern: { case: "post", value: "/v1/x" }, body: "nope" }, "body nope"],
    ["a response_body naming no field", { pattern: { case: "get", value: "/v1/x" }, responseBody: "nope" }, "response_body nope"],
    ["a bad template", { pattern: { case: "get", value: "/v1/**/x" } }, "** must be the last"],
    ["a rule without a pattern", {}, "without a pattern"],
  ] as const)("rejects %s", (_what, rule, message) => {
    expect(() => restBindings([serviceWith(rule as MessageInitShape<typeof HttpRuleSchema>)])).toThrow(message);
  });

  it("rejects client-streaming methods and duplicate routes", () => {
    expect(() => restBindings([serviceWith({ pattern: { case: "post", value: "/v1/x" } }, { clientStreaming: true })])).toThrow("client_streaming");
    const twice = serviceWith({
      pattern: { case: "get", value: "/v1/x" },
      additionalBindings: [create(HttpRuleSchema, { pattern: { case: "get", value: "/v1/x" } })],
    });
    expect(() => restBindings([twice])).toThrow("already bound");
  });
});

describe("RestRouter", () => {
  const router = new RestRouter(restBindings(PUBLIC));
  const route = (method: string, path: string): string => {
    const m = router.match(method, path);
    if (m.kind === "match") return `${m.binding.method.name} ${JSON.stringify(Object.fromEntries(m.captures))}`;
    if (m.kind === "method-not-allowed") return `405 ${m.allow.join(",")}`;
    return "404";
  };

  it.each([
    ["GET", "/v1/tasks", "ListTasks {}"],
    ["POST", "/v1/tasks", "SubmitTask {}"],
    ["POST", "/v1/tasks:batch", "SubmitTasks {}"],
    ["GET", "/v1/tasks/t-1", 'GetTask {"task_id":"t-1"}'],
    ["POST", "/v1/tasks/t-1:cancel", 'CancelTask {"task_id":"t-1"}'],
    ["GET", "/v1/tasks/t-1:watch", 'WatchTask {"task_id":"t-1"}'],
    ["GET", "/v1/config/worker/w-1", 'GetConfig {"namespace":"worker/w-1"}'],
    ["PUT", "/v1/config/worker/w-1", 'PutConfig {"namespace":"worker/w-1"}'],
    ["GET", "/v1/config/worker/w-1:history", 'GetConfigHistory {"namespace":"worker/w-1"}'],
    ["POST", "/v1/config/a/b:rollback", 'RollbackConfig {"namespace":"a/b"}'],
    ["GET", "/v1/config:watch", "WatchConfig {}"],
    ["GET", "/v1/config", "ListConfigs {}"],
    ["GET", "/v1/cluster/workers:watch", "WatchWorkers {}"],
    ["DELETE", "/v1/apikeys/k1", 'RevokeApiKey {"id":"k1"}'],
    ["get", "/v1/schedules/s1", 'GetSchedule {"schedule_id":"s1"}'],
  ])("routes %s %s to %s", (method, path, expected) => {
    expect(route(method, path)).toBe(expected);
  });

  it("answers 405 with the methods the path allows", () => {
    expect(route("DELETE", "/v1/tasks")).toBe("405 GET,POST");
    expect(route("GET", "/v1/tasks:batch")).toBe("405 POST");
    expect(route("PUT", "/v1/config")).toBe("405 GET");
    expect(route("PATCH", "/v1/config/a/b")).toBe("405 DELETE,GET,PUT");
    // A verb route owns its path: not a GetTask of task "t-1:cancel".
    expect(route("GET", "/v1/tasks/t-1:cancel")).toBe("405 POST");
  });

  it("answers 404 for paths no template matches", () => {
    expect(route("GET", "/v2/tasks")).toBe("404");
    expect(route("GET", "/v1/tasks/")).toBe("404");
    expect(route("GET", "/v1/tasks/a/b")).toBe("404");
    expect(route("GET", "/v1/tasks/t-1:explode")).toBe('GetTask {"task_id":"t-1:explode"}');
  });

  it("prefers literal segments over variables", () => {
    const svc = serviceWith({
      pattern: { case: "get", value: "/v1/{id}/x" },
      additionalBindings: [create(HttpRuleSchema, { pattern: { case: "get", value: "/v1/special/x" } })],
    });
    const r = new RestRouter(restBindings([svc]));
    const special = r.match("GET", "/v1/special/x");
    expect(special.kind === "match" && special.binding.bindingIndex).toBe(1);
    const other = r.match("GET", "/v1/other/x");
    expect(other.kind === "match" && other.binding.bindingIndex).toBe(0);
  });
});
