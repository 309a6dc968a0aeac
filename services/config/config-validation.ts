import { ScalarType, create, fromJson, type DescField, type DescMessage, type JsonObject, type JsonValue } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema } from "../../gen/google/rpc/error_details_pb.js";
import {
  GatewayConfigSchema,
  SchedulerConfigSchema,
  WorkerConfigSchema,
} from "../../gen/taskmesh/v1/config_service_pb.js";
import { invalidArgument } from "../../lib/errors.js";

/** One thing wrong with a request: the field path and what is wrong (`must be between 1 and 10000`). */
export interface Violation {
  field: string;
  description: string;
}

const NAMESPACE = /^[A-Za-z0-9][A-Za-z0-9_.-]*(\/[A-Za-z0-9][A-Za-z0-9_.-]*)*$/;
/** Longest namespace name. */
export const MAX_NAMESPACE_LENGTH = 200;
/** Largest document, in bytes of its JSON form (a put writes it twice: document and history). */
export const MAX_DOCUMENT_BYTES = 256 * 1024;
/** Most labels of one gray release. */
export const MAX_GRAY_LABELS = 16;
const LABEL_KEY = /^[A-Za-z0-9]([A-Za-z0-9_.\/-]{0,62})$/;
const LABEL_VALUE = /^[A-Za-z0-9_.\/:-]{0,63}$/;

/**
 * Checks a namespace name: segments of `[A-Za-z0-9_.-]` starting with a letter or digit, separated
 * by `/` ("gateway", "worker/w-1", "my-handlers"); case-sensitive (worker ids may hold upper-case
 * host names); no `:` (REST paths use it for `:history`, `:rollback`…). `gateway/…` and
 * `scheduler/…` are reserved (refused) so a schema can be given to them later without breaking
 * stored documents.
 */
export function checkNamespace(ns: string, field = "namespace"): void {
  if (ns === "") throw invalidArgument(field, "is required");
  if (ns.length > MAX_NAMESPACE_LENGTH || !NAMESPACE.test(ns)) {
    throw invalidArgument(field, "letters, digits and _ . - in segments separated by /, at most 200 characters");
  }
  if (ns.startsWith("gateway/") || ns.startsWith("scheduler/")) {
    throw invalidArgument(field, `${ns.slice(0, ns.indexOf("/"))}/… is reserved`);
  }
}

/** Checks the labels of a gray release: 1..16 labels, Kubernetes-like keys and values. */
export function grayLabelViolations(labels: Readonly<Record<string, string>>, field = "gray_labels"): Violation[] {
  const out: Violation[] = [];
  const entries = Object.entries(labels);
  if (entries.length > MAX_GRAY_LABELS) out.push({ field, description: `at most ${MAX_GRAY_LABELS} labels` });
  for (const [k, v] of entries) {
    if (!LABEL_KEY.test(k)) {
      out.push({ field: `${field}.${k}`, description: "key: 1-63 letters, digits, _ . / - starting with a letter or digit" });
    } else if (!LABEL_VALUE.test(v)) {
      out.push({ field: `${field}.${k}`, description: "value: at most 63 letters, digits, _ . / : -" });
    }
  }
  return out;
}

/** A numeric range rule; values are compared as numbers (int64 fields are far below 2^53 here). */
interface RangeRule {
  kind: "range";
  min: number;
  max: number;
}

/** A rule for a repeated string field. */
interface ListRule {
  kind: "list";
  maxItems: number;
  maxLength: number;
  pattern: RegExp;
  /** What `pattern` means, for the message. */
  patternHelp: string;
}

/** A rule for a map of name → message of numbers: the names' form, and each number's range. */
interface MapRule {
  kind: "map";
  maxEntries: number;
  key: RegExp;
  /** What `key` means, for the message. */
  keyHelp: string;
  /** By protobuf field name: its JSON-decoded local name and range. */
  fields: Readonly<Record<string, { localName: string; min: number; max: number }>>;
}

type FieldRule = RangeRule | ListRule | MapRule;

/** Tenant names, as the scheduler admits them. */
const TENANT = /^[A-Za-z0-9_.-]{1,100}$/;
/** API key ids (the 16 hex digits of `tm_<id>_<secret>`), or "bootstrap". */
const KEY_ID = /^([0-9a-f]{16}|bootstrap)$/;

const range = (min: number, max: number): RangeRule => ({ kind: "range", min, max });

const KIB = 1024;
const MIB = 1024 * KIB;
const SECOND = 1000;
const HOUR = 3600 * SECOND;
const DAY = 24 * HOUR;
const MAX_QUEUES_QUOTA = 1_000_000;
const MAX_TASKS_QUOTA = 1_000_000_000;

/** A built-in namespace's schema: the protobuf message plus per-field rules. */
export interface ConfigSchema {
  message: DescMessage;
  /** Rules by protobuf field name; every field of the message has one. */
  rules: Readonly<Record<string, FieldRule>>;
  /** Checks across fields, on the fields the document sets (by protobuf field name). */
  cross?: (set: ReadonlyMap<string, number>) => Violation[];
}

/**
 * The rules of the built-in namespaces. A field a document leaves out is not checked (the service
 * uses its own default); a field it sets must be in range. Ranges:
 *
 * gateway (GatewayConfig): rate_limit_per_second 0..1e6 (requests/s per key); rate_limit_burst
 * 1..1e6; max_request_bytes 1 KiB..64 MiB; cors_origins up to 100 entries, each `*` or
 * `scheme://host[:port]`; key_rate_limits up to 100,000 key ids, each per_second and burst 0..1e6.
 *
 * scheduler (SchedulerConfig): default_max_attempts 1..100; default_backoff_initial_ms 1 ms..24 h;
 * default_backoff_max_ms 1 ms..7 d and not below default_backoff_initial_ms when both are set;
 * default_backoff_multiplier 1..100; default_backoff_jitter 0..1; task_lease_ms 100 ms..24 h;
 * aging_ms_per_level 1 ms..24 h; default_result_ttl_ms 1 s..30 d; max_payload_bytes 1 KiB..64 MiB;
 * max_queues_per_tenant 0..1e6 and max_tasks_per_tenant 0..1e9 (0: no limit); tenant_quotas up
 * to 10,000 tenants (names as the scheduler admits them), each max_queues and max_tasks in the
 * same ranges.
 *
 * worker and worker/<id> (WorkerConfig): slots 1..10000; http_allowed_hosts up to 1000 host names,
 * IP addresses or CIDR blocks (`*.` wildcards allowed); shutdown_grace_ms 0..1 h;
 * heartbeat_ms 100 ms..60 s.
 */
export const BUILTIN_SCHEMAS: Readonly<Record<"gateway" | "scheduler" | "worker", ConfigSchema>> = {
  gateway: {
    message: GatewayConfigSchema,
    rules: {
      rate_limit_per_second: range(0, 1_000_000),
      rate_limit_burst: range(1, 1_000_000),
      max_request_bytes: range(KIB, 64 * MIB),
      cors_origins: {
        kind: "list",
        maxItems: 100,
        maxLength: 253,
        pattern: /^(\*|[a-z][a-z0-9+.-]*:\/\/[^\s/]+)$/,
        patternHelp: `"*" or scheme://host[:port]`,
      },
      key_rate_limits: {
        kind: "map",
        maxEntries: 100_000,
        key: KEY_ID,
        keyHelp: "an API key id (16 hex digits) or bootstrap",
        fields: {
          per_second: { localName: "perSecond", min: 0, max: 1_000_000 },
          burst: { localName: "burst", min: 0, max: 1_000_000 },
        },
      },
    },
  },
  scheduler: {
    message: SchedulerConfigSchema,
    rules: {
      default_max_attempts: range(1, 100),
      default_backoff_initial_ms: range(1, DAY),
      default_backoff_max_ms: range(1, 7 * DAY),
      default_backoff_multiplier: range(1, 100),
      default_backoff_jitter: range(0, 1),
      task_lease_ms: range(100, DAY),
      aging_ms_per_level: range(1, DAY),
      default_result_ttl_ms: range(SECOND, 30 * DAY),
      max_payload_bytes: range(KIB, 64 * MIB),
      max_queues_per_tenant: range(0, MAX_QUEUES_QUOTA),
      max_tasks_per_tenant: range(0, MAX_TASKS_QUOTA),
      tenant_quotas: {
        kind: "map",
        maxEntries: 10_000,
        key: TENANT,
        keyHelp: "a tenant name (1 to 100 letters, digits, _ . -)",
        fields: {
          max_queues: { localName: "maxQueues", min: 0, max: MAX_QUEUES_QUOTA },
          max_tasks: { localName: "maxTasks", min: 0, max: MAX_TASKS_QUOTA },
        },
      },
    },
    cross(set) {
      const initial = set.get("default_backoff_initial_ms");
      const max = set.get("default_backoff_max_ms");
      if (initial !== undefined && max !== undefined && max < initial) {
        return [{ field: "default_backoff_max_ms", description: "must not be less than default_backoff_initial_ms" }];
      }
      return [];
    },
  },
  worker: {
    message: WorkerConfigSchema,
    rules: {
      slots: range(1, 10_000),
      http_allowed_hosts: {
        kind: "list",
        maxItems: 1000,
        maxLength: 253,
        pattern: /^[A-Za-z0-9*_.:\[\]\/-]+$/,
        patternHelp: "a host name, IP address or CIDR block",
      },
      shutdown_grace_ms: range(0, HOUR),
      heartbeat_ms: range(100, 60 * SECOND),
    },
  },
};

/**
 * The schema of a namespace: `gateway`, `scheduler`, `worker` and `worker/<id>` have one; every
 * other namespace is free-form (any JSON object) and gets undefined.
 */
export function schemaFor(ns: string): ConfigSchema | undefined {
  if (ns === "gateway") return BUILTIN_SCHEMAS.gateway;
  if (ns === "scheduler") return BUILTIN_SCHEMAS.scheduler;
  if (ns === "worker" || ns.startsWith("worker/")) return BUILTIN_SCHEMAS.worker;
  return undefined;
}

/** What a field's JSON must look like, for messages. */
function expected(field: DescField): string {
  if (field.fieldKind === "list") return "must be a list of strings";
  if (field.fieldKind !== "scalar") return "has the wrong type";
  switch (field.scalar) {
    case ScalarType.DOUBLE:
    case ScalarType.FLOAT:
      return "must be a number";
    case ScalarType.STRING:
      return "must be a string";
    case ScalarType.BOOL:
      return "must be true or false";
    default:
      return "must be an integer";
  }
}

function numberOf(v: unknown): number | undefined {
  if (typeof v === "number") return v;
  if (typeof v === "bigint") return Number(v);
  return undefined;
}

/**
 * Checks a document against a schema and returns every violation (empty when valid), with field
 * paths under `prefix` (`value.slots`). Protobuf JSON rules (`fromJson`, strict): unknown fields and
 * wrong types are refused; both the proto name (`http_allowed_hosts`) and the JSON name
 * (`httpAllowedHosts`) are accepted, but not both at once; `null` is refused (leave the field out
 * instead). Then each field the document sets must satisfy its rule.
 */
export function schemaViolations(schema: ConfigSchema, value: JsonObject, prefix = "value"): Violation[] {
  const out: Violation[] = [];
  const byName = new Map<string, DescField>();
  for (const f of schema.message.fields) {
    byName.set(f.name, f);
    byName.set(f.jsonName, f);
  }
  const seen = new Map<DescField, string>();
  const decoded = new Map<string, unknown>();
  for (const [key, raw] of Object.entries(value)) {
    const path = `${prefix}.${key}`;
    const field = byName.get(key);
    if (field === undefined) {
      out.push({ field: path, description: "unknown field" });
      continue;
    }
    const other = seen.get(field);
    if (other !== undefined) {
      out.push({ field: path, description: `set twice (also as ${other})` });
      continue;
    }
    seen.set(field, key);
    if (raw === null) {
      out.push({ field: path, description: "must not be null (leave the field out to use the default)" });
      continue;
    }
    let v: unknown;
    try {
      const msg = fromJson(schema.message, { [key]: raw } as JsonValue) as unknown as Record<string, unknown>;
      v = msg[field.localName];
    } catch {
      out.push({ field: path, description: expected(field) });
      continue;
    }
    const rule = schema.rules[field.name];
    if (rule === undefined) {
      decoded.set(field.name, v);
      continue;
    }
    const problem = ruleViolation(rule, v);
    if (problem !== undefined) out.push({ field: path, description: problem });
    else decoded.set(field.name, v);
  }
  if (out.length === 0) {
    // The whole document through the strict decoder once more: what the services will decode.
    try {
      fromJson(schema.message, value);
    } catch (err) {
      out.push({ field: prefix, description: (err as Error).message });
    }
  }
  if (out.length === 0 && schema.cross !== undefined) {
    const numbers = new Map<string, number>();
    for (const [name, v] of decoded) {
      const n = numberOf(v);
      if (n !== undefined) numbers.set(name, n);
    }
    for (const v of schema.cross(numbers)) out.push({ field: `${prefix}.${v.field}`, description: v.description });
  }
  return out;
}

function ruleViolation(rule: FieldRule, v: unknown): string | undefined {
  switch (rule.kind) {
    case "range": {
      const n = numberOf(v);
      if (n === undefined || !Number.isFinite(n)) return "must be a finite number";
      if (n < rule.min || n > rule.max) return `must be between ${rule.min} and ${rule.max}`;
      return undefined;
    }
    case "list": {
      if (!Array.isArray(v)) return "must be a list of strings";
      if (v.length > rule.maxItems) return `at most ${rule.maxItems} entries`;
      for (const [i, item] of v.entries()) {
        if (typeof item !== "string" || item.length === 0 || item.length > rule.maxLength) {
          return `[${i}]: must be 1 to ${rule.maxLength} characters`;
        }
        if (!rule.pattern.test(item)) return `[${i}]: must be ${rule.patternHelp}`;
      }
      return undefined;
    }
    case "map": {
      if (typeof v !== "object" || v === null) return "must be an object";
      const entries = Object.entries(v as Record<string, Record<string, unknown>>);
      if (entries.length > rule.maxEntries) return `at most ${rule.maxEntries} entries`;
      for (const [name, msg] of entries) {
        if (!rule.key.test(name)) return `.${name}: must be ${rule.keyHelp}`;
        for (const [field, r] of Object.entries(rule.fields)) {
          const n = numberOf(msg[r.localName]) ?? 0;
          if (!Number.isFinite(n) || n < r.min || n > r.max) return `.${name}.${field}: must be between ${r.min} and ${r.max}`;
        }
      }
      return undefined;
    }
  }
}

/**
 * Every violation of a namespace's document (empty when valid): its size, then its schema when the
 * namespace has one (see {@link BUILTIN_SCHEMAS}).
 */
export function configViolations(ns: string, value: JsonObject, prefix = "value"): Violation[] {
  const bytes = Buffer.byteLength(JSON.stringify(value));
  if (bytes > MAX_DOCUMENT_BYTES) {
    return [{ field: prefix, description: `must be at most ${MAX_DOCUMENT_BYTES} bytes of JSON (is ${bytes})` }];
  }
  const schema = schemaFor(ns);
  return schema === undefined ? [] : schemaViolations(schema, value, prefix);
}

/**
 * An INVALID_ARGUMENT error for violations: the message lists them (`value.slots: must be between
 * 1 and 10000; value.bogus: unknown field`) and a `google.rpc.BadRequest` detail carries each one.
 */
export function violationsError(violations: readonly Violation[]): ConnectError {
  const badRequest = create(BadRequestSchema, {
    fieldViolations: violations.map((v) => ({ field: v.field, description: v.description })),
  });
  return new ConnectError(
    violations.map((v) => `${v.field}: ${v.description}`).join("; "),
    Code.InvalidArgument,
    undefined,
    [{ desc: BadRequestSchema, value: badRequest }],
  );
}

/** Throws INVALID_ARGUMENT (see {@link violationsError}) unless the document is valid for its namespace. */
export function checkConfig(ns: string, value: JsonObject, prefix = "value"): void {
  const violations = configViolations(ns, value, prefix);
  if (violations.length > 0) throw violationsError(violations);
}
