import type { JsonObject } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { BadRequestSchema } from "../../gen/google/rpc/error_details_pb.js";
import {
  checkConfig,
  checkNamespace,
  configViolations,
  grayLabelViolations,
  MAX_DOCUMENT_BYTES,
  schemaFor,
} from "../../services/config/config-validation.js";

/** The messages of every violation of a document, as `field: description`. */
const problems = (ns: string, value: JsonObject): string[] =>
  configViolations(ns, value).map((v) => `${v.field}: ${v.description}`);

describe("config validation", () => {
  it("gives gateway, scheduler, worker and worker/<id> their schemas; other namespaces are free-form", () => {
    expect(schemaFor("gateway")?.message.typeName).toBe("taskmesh.v1.GatewayConfig");
    expect(schemaFor("scheduler")?.message.typeName).toBe("taskmesh.v1.SchedulerConfig");
    expect(schemaFor("worker")?.message.typeName).toBe("taskmesh.v1.WorkerConfig");
    expect(schemaFor("worker/w-1")?.message.typeName).toBe("taskmesh.v1.WorkerConfig");
    expect(schemaFor("workers")).toBeUndefined();
    expect(schemaFor("my-handlers/thumbnails")).toBeUndefined();
    expect(problems("my-handlers", { anything: [1, { nested: true }], n: null })).toEqual([]);
  });

  it("accepts valid documents with snake_case or lowerCamelCase names", () => {
    const valid: [string, JsonObject][] = [
      ["gateway", {}],
      ["gateway", { rate_limit_per_second: 0, rate_limit_burst: 1, max_request_bytes: 1024, cors_origins: ["*"] }],
      ["gateway", { rateLimitPerSecond: 12.5, rateLimitBurst: 1_000_000, maxRequestBytes: "67108864", corsOrigins: ["https://a.example:8443"] }],
      [
        "scheduler",
        {
          default_max_attempts: 3,
          default_backoff_initial_ms: 100,
          default_backoff_max_ms: 100,
          default_backoff_multiplier: 1,
          default_backoff_jitter: 0,
          task_lease_ms: 30_000,
          aging_ms_per_level: 5_000,
          default_result_ttl_ms: 86_400_000,
          max_payload_bytes: 1_048_576,
        },
      ],
      ["scheduler", { defaultBackoffJitter: 1, defaultBackoffMultiplier: 100, taskLeaseMs: 100 }],
      ["worker", { slots: 1, http_allowed_hosts: ["127.0.0.1", "10.0.0.0/8", "*.internal", "[::1]"], shutdown_grace_ms: 0, heartbeat_ms: 100 }],
      ["worker/w-1", { slots: 10_000, httpAllowedHosts: [], shutdownGraceMs: 3_600_000, heartbeatMs: 60_000 }],
    ];
    for (const [ns, value] of valid) {
      expect(problems(ns, value), `${ns} ${JSON.stringify(value)}`).toEqual([]);
      expect(() => checkConfig(ns, value)).not.toThrow();
    }
  });

  it("checks the tenant quotas and per-key rate limits: names, ranges, entries", () => {
    expect(
      problems("scheduler", {
        max_queues_per_tenant: 0,
        max_tasks_per_tenant: 1_000_000_000,
        tenant_quotas: { acme: { max_queues: 10, max_tasks: 1000 }, "beta.eu": {} },
      }),
    ).toEqual([]);
    expect(problems("scheduler", { max_queues_per_tenant: -1 })).toEqual(["value.max_queues_per_tenant: must be between 0 and 1000000"]);
    expect(problems("scheduler", { tenant_quotas: { "a:b": { max_queues: 1 } } })).toEqual([
      "value.tenant_quotas: .a:b: must be a tenant name (1 to 100 letters, digits, _ . -)",
    ]);
    expect(problems("scheduler", { tenant_quotas: { acme: { max_tasks: 2_000_000_000 } } })).toEqual([
      "value.tenant_quotas: .acme.max_tasks: must be between 0 and 1000000000",
    ]);
    expect(problems("scheduler", { tenant_quotas: { acme: { max_queue: 1 } } })).toEqual(["value.tenant_quotas: has the wrong type"]);
    expect(problems("gateway", { key_rate_limits: { "0123456789abcdef": { per_second: 2.5, burst: 5 }, bootstrap: { per_second: 0 } } })).toEqual([]);
    expect(problems("gateway", { key_rate_limits: { "tm_0123": { per_second: 1 } } })).toEqual([
      "value.key_rate_limits: .tm_0123: must be an API key id (16 hex digits) or bootstrap",
    ]);
    expect(problems("gateway", { key_rate_limits: { "0123456789abcdef": { per_second: -1 } } })).toEqual([
      "value.key_rate_limits: .0123456789abcdef.per_second: must be between 0 and 1000000",
    ]);
  });

  it("refuses unknown fields in every schema, naming them", () => {
    expect(problems("gateway", { bogus: 1 })).toEqual(["value.bogus: unknown field"]);
    expect(problems("scheduler", { task_lease: 5000 })).toEqual(["value.task_lease: unknown field"]);
    expect(problems("worker", { slots: 2, bogus: true })).toEqual(["value.bogus: unknown field"]);
    expect(problems("worker/w-9", { Slots: 2 })).toEqual(["value.Slots: unknown field"]);
  });

  it("refuses wrong types in every schema", () => {
    expect(problems("gateway", { rate_limit_per_second: "fast" })).toEqual(["value.rate_limit_per_second: must be a number"]);
    expect(problems("gateway", { rate_limit_burst: 1.5 })).toEqual(["value.rate_limit_burst: must be an integer"]);
    expect(problems("gateway", { cors_origins: "*" })).toEqual(["value.cors_origins: must be a list of strings"]);
    expect(problems("scheduler", { task_lease_ms: "soon" })).toEqual(["value.task_lease_ms: must be an integer"]);
    expect(problems("scheduler", { default_backoff_jitter: true })).toEqual(["value.default_backoff_jitter: must be a number"]);
    expect(problems("worker", { slots: "many" })).toEqual(["value.slots: must be an integer"]);
    expect(problems("worker", { slots: 3_000_000_000 })).toEqual(["value.slots: must be an integer"]);
    expect(problems("worker", { http_allowed_hosts: [1] })).toEqual(["value.http_allowed_hosts: must be a list of strings"]);
    expect(problems("worker", { heartbeat_ms: { ms: 5 } })).toEqual(["value.heartbeat_ms: must be an integer"]);
  });

  it("refuses out-of-range values in every schema, with the range", () => {
    expect(problems("gateway", { rate_limit_per_second: -1 })).toEqual(["value.rate_limit_per_second: must be between 0 and 1000000"]);
    expect(problems("gateway", { rate_limit_burst: 0 })).toEqual(["value.rate_limit_burst: must be between 1 and 1000000"]);
    expect(problems("gateway", { max_request_bytes: 1023 })).toEqual(["value.max_request_bytes: must be between 1024 and 67108864"]);
    expect(problems("gateway", { maxRequestBytes: 64 * 1024 * 1024 + 1 })).toEqual(["value.maxRequestBytes: must be between 1024 and 67108864"]);
    expect(problems("gateway", { cors_origins: ["not an origin"] })).toEqual([
      'value.cors_origins: [0]: must be "*" or scheme://host[:port]',
    ]);
    expect(problems("gateway", { rate_limit_per_second: "NaN" })).toEqual(["value.rate_limit_per_second: must be a finite number"]);
    expect(problems("scheduler", { default_max_attempts: 0 })).toEqual(["value.default_max_attempts: must be between 1 and 100"]);
    expect(problems("scheduler", { default_backoff_jitter: 1.5 })).toEqual(["value.default_backoff_jitter: must be between 0 and 1"]);
    expect(problems("scheduler", { default_backoff_multiplier: 0.5 })).toEqual(["value.default_backoff_multiplier: must be between 1 and 100"]);
    expect(problems("scheduler", { task_lease_ms: 0 })).toEqual(["value.task_lease_ms: must be between 100 and 86400000"]);
    expect(problems("scheduler", { default_backoff_initial_ms: -5 })).toEqual(["value.default_backoff_initial_ms: must be between 1 and 86400000"]);
    expect(problems("scheduler", { default_backoff_initial_ms: 1000, default_backoff_max_ms: 999 })).toEqual([
      "value.default_backoff_max_ms: must not be less than default_backoff_initial_ms",
    ]);
    expect(problems("worker", { slots: 0 })).toEqual(["value.slots: must be between 1 and 10000"]);
    expect(problems("worker", { slots: 10_001 })).toEqual(["value.slots: must be between 1 and 10000"]);
    expect(problems("worker/w-1", { heartbeat_ms: 99 })).toEqual(["value.heartbeat_ms: must be between 100 and 60000"]);
    expect(problems("worker", { http_allowed_hosts: [""] })).toEqual(["value.http_allowed_hosts: [0]: must be 1 to 253 characters"]);
    expect(problems("worker", { http_allowed_hosts: ["a b"] })).toEqual([
      "value.http_allowed_hosts: [0]: must be a host name, IP address or CIDR block",
    ]);
  });

  it("refuses null and a field set under both of its names", () => {
    expect(problems("worker", { slots: null })).toEqual(["value.slots: must not be null (leave the field out to use the default)"]);
    expect(problems("worker", { heartbeat_ms: 1000, heartbeatMs: 1000 })).toEqual(["value.heartbeatMs: set twice (also as heartbeat_ms)"]);
  });

  it("reports every violation at once, as INVALID_ARGUMENT with BadRequest details", () => {
    let caught: unknown;
    try {
      checkConfig("worker", { slots: 0, bogus: 1, heartbeat_ms: "x" });
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(ConnectError);
    const err = caught as ConnectError;
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.rawMessage).toBe(
      "value.slots: must be between 1 and 10000; value.bogus: unknown field; value.heartbeat_ms: must be an integer",
    );
    const details = err.findDetails(BadRequestSchema);
    expect(details[0]?.fieldViolations.map((v) => v.field)).toEqual(["value.slots", "value.bogus", "value.heartbeat_ms"]);
  });

  it("refuses documents larger than the size limit, whatever the namespace", () => {
    const big = { blob: "x".repeat(MAX_DOCUMENT_BYTES) };
    expect(problems("my-handlers", big)[0]).toMatch(/^value: must be at most 262144 bytes of JSON/);
  });

  it("checks namespace names and reserves gateway/… and scheduler/…", () => {
    for (const ok of ["gateway", "worker", "worker/w-1", "worker/MyHost-12-ab", "my_handlers.v2/a-b"]) {
      expect(() => checkNamespace(ok)).not.toThrow();
    }
    for (const bad of ["", "-a", "a:history", "a//b", "/a", "a/", "with space", "gateway/x", "scheduler/r1", "x".repeat(201)]) {
      expect(() => checkNamespace(bad), bad).toThrow(expect.objectContaining({ code: Code.InvalidArgument }));
    }
  });

  it("checks gray labels", () => {
    expect(grayLabelViolations({ canary: "true", "zone/eu": "west-1" })).toEqual([]);
    expect(grayLabelViolations({ "": "x" })[0]?.field).toBe("gray_labels.");
    expect(grayLabelViolations({ canary: "has space" })[0]?.description).toMatch(/^value:/);
    const many = Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`l${i}`, "1"]));
    expect(grayLabelViolations(many)[0]?.description).toBe("at most 16 labels");
  });
});
