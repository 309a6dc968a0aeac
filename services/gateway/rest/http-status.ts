/**
 * gRPC status codes ↔ HTTP statuses for REST, and errors as `google.rpc.Status` JSON bodies.
 *
 * The code → status table is grpc-gateway's (`runtime.HTTPStatusFromCode`), so REST clients of
 * taskmesh see what they see in front of any other gRPC service.
 */
import {
  create,
  createFileRegistry,
  createRegistry,
  toJson,
  type DescMessage,
  type JsonObject,
  type JsonValue,
  type Registry,
} from "@bufbuild/protobuf";
import {
  AnySchema,
  FieldDescriptorProto_Label,
  FieldDescriptorProto_Type,
  FileDescriptorProtoSchema,
  file_google_protobuf_duration,
  type DescriptorProto,
  type FieldDescriptorProto,
  type MessageOptions,
} from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";

const STATUS_BY_CODE: Readonly<Record<Code, number>> = {
  [Code.Canceled]: 499,
  [Code.Unknown]: 500,
  [Code.InvalidArgument]: 400,
  [Code.DeadlineExceeded]: 504,
  [Code.NotFound]: 404,
  [Code.AlreadyExists]: 409,
  [Code.PermissionDenied]: 403,
  [Code.ResourceExhausted]: 429,
  [Code.FailedPrecondition]: 400,
  [Code.Aborted]: 409,
  [Code.OutOfRange]: 400,
  [Code.Unimplemented]: 501,
  [Code.Internal]: 500,
  [Code.Unavailable]: 503,
  [Code.DataLoss]: 500,
  [Code.Unauthenticated]: 401,
};

/**
 * The HTTP status for a gRPC code, exactly as grpc-gateway maps them: OK 200, CANCELLED 499,
 * UNKNOWN 500, INVALID_ARGUMENT 400, DEADLINE_EXCEEDED 504, NOT_FOUND 404, ALREADY_EXISTS 409,
 * PERMISSION_DENIED 403, UNAUTHENTICATED 401, RESOURCE_EXHAUSTED 429, FAILED_PRECONDITION 400,
 * ABORTED 409, OUT_OF_RANGE 400, UNIMPLEMENTED 501, INTERNAL 500, UNAVAILABLE 503, DATA_LOSS 500.
 * Anything else (a code from a newer peer) is 500.
 */
export function httpStatusFromCode(code: Code | 0): number {
  if (code === 0) return 200;
  return STATUS_BY_CODE[code] ?? 500;
}

/**
 * The best gRPC code for an HTTP status when a REST reply carries no `google.rpc.Status` body
 * (a proxy's error page, say). It inverts {@link httpStatusFromCode} where that is unambiguous and
 * otherwise picks the code a client should act on: 409 → ABORTED (retry the read-modify-write),
 * 400 → INVALID_ARGUMENT, 405 → UNIMPLEMENTED, 413 → INVALID_ARGUMENT, 502 → UNAVAILABLE; other
 * 4xx → FAILED_PRECONDITION, other 5xx → UNKNOWN. 2xx and 3xx are not errors: they give 0 (OK).
 * Prefer the code in the body when there is one.
 */
export function codeFromHttpStatus(status: number): Code | 0 {
  switch (status) {
    case 400:
    case 413:
      return Code.InvalidArgument;
    case 401:
      return Code.Unauthenticated;
    case 403:
      return Code.PermissionDenied;
    case 404:
      return Code.NotFound;
    case 405:
    case 501:
      return Code.Unimplemented;
    case 409:
      return Code.Aborted;
    case 429:
      return Code.ResourceExhausted;
    case 499:
      return Code.Canceled;
    case 500:
      return Code.Internal;
    case 502:
    case 503:
      return Code.Unavailable;
    case 504:
      return Code.DeadlineExceeded;
  }
  if (status >= 200 && status < 400) return 0;
  if (status >= 400 && status < 500) return Code.FailedPrecondition;
  return Code.Unknown;
}

/** A `google.rpc.Status` in its JSON form: what every REST error body is. */
export interface StatusJson {
  /** The gRPC code as a number (`5` for NOT_FOUND). */
  code: number;
  message: string;
  /** `google.protobuf.Any` JSON objects: `{"@type": "type.googleapis.com/google.rpc.BadRequest", ...}`. */
  details: JsonObject[];
}

// --- google.rpc error detail types -----------------------------------------------------------
//
// gen/ has no google/rpc types (buf.gen.yaml does not vendor google/rpc/*.proto), so the standard
// error details (google/rpc/error_details.proto) are described here from their field numbers, to
// decode the details a ConnectError carries. Once the lead vendors and generates them, pass the
// generated file in `registry` to {@link statusFromError}; the types here stay a fallback.

type FieldSpec = [name: string, number: number, type: FieldDescriptorProto_Type | string, repeated?: boolean];

function camel(name: string): string {
  return name.replace(/_([a-z0-9])/g, (_m, c: string) => c.toUpperCase());
}

function fieldProto([name, number, type, repeated]: FieldSpec): Partial<FieldDescriptorProto> {
  const isRef = typeof type === "string";
  return {
    name,
    number,
    jsonName: camel(name),
    label: repeated === true ? FieldDescriptorProto_Label.REPEATED : FieldDescriptorProto_Label.OPTIONAL,
    type: isRef ? FieldDescriptorProto_Type.MESSAGE : type,
    ...(isRef ? { typeName: type } : {}),
  };
}

function messageProto(name: string, fields: FieldSpec[], nested: Partial<DescriptorProto>[] = [], options?: Partial<MessageOptions>): Partial<DescriptorProto> {
  return { name, field: fields.map(fieldProto) as FieldDescriptorProto[], nestedType: nested as DescriptorProto[], ...(options ? { options: options as MessageOptions } : {}) };
}

function stringMapEntry(entry: string): Partial<DescriptorProto> {
  const T = FieldDescriptorProto_Type;
  return messageProto(entry, [["key", 1, T.STRING], ["value", 2, T.STRING]], [], { mapEntry: true });
}

function errorDetailsFile() {
  const T = FieldDescriptorProto_Type;
  return create(FileDescriptorProtoSchema, {
    name: "google/rpc/error_details.proto",
    package: "google.rpc",
    syntax: "proto3",
    dependency: ["google/protobuf/duration.proto"],
    messageType: [
      messageProto("ErrorInfo", [["reason", 1, T.STRING], ["domain", 2, T.STRING], ["metadata", 3, ".google.rpc.ErrorInfo.MetadataEntry", true]], [
        stringMapEntry("MetadataEntry"),
      ]),
      messageProto("RetryInfo", [["retry_delay", 1, ".google.protobuf.Duration"]]),
      messageProto("DebugInfo", [["stack_entries", 1, T.STRING, true], ["detail", 2, T.STRING]]),
      messageProto("QuotaFailure", [["violations", 1, ".google.rpc.QuotaFailure.Violation", true]], [
        messageProto(
          "Violation",
          [
            ["subject", 1, T.STRING],
            ["description", 2, T.STRING],
            ["api_service", 3, T.STRING],
            ["quota_metric", 4, T.STRING],
            ["quota_id", 5, T.STRING],
            ["quota_dimensions", 6, ".google.rpc.QuotaFailure.Violation.QuotaDimensionsEntry", true],
            ["quota_value", 7, T.INT64],
          ],
          [stringMapEntry("QuotaDimensionsEntry")],
        ),
      ]),
      messageProto("PreconditionFailure", [["violations", 1, ".google.rpc.PreconditionFailure.Violation", true]], [
        messageProto("Violation", [["type", 1, T.STRING], ["subject", 2, T.STRING], ["description", 3, T.STRING]]),
      ]),
      messageProto("BadRequest", [["field_violations", 1, ".google.rpc.BadRequest.FieldViolation", true]], [
        messageProto("FieldViolation", [
          ["field", 1, T.STRING],
          ["description", 2, T.STRING],
          ["reason", 3, T.STRING],
          ["localized_message", 4, ".google.rpc.LocalizedMessage"],
        ]),
      ]),
      messageProto("RequestInfo", [["request_id", 1, T.STRING], ["serving_data", 2, T.STRING]]),
      messageProto("ResourceInfo", [["resource_type", 1, T.STRING], ["resource_name", 2, T.STRING], ["owner", 3, T.STRING], ["description", 4, T.STRING]]),
      messageProto("Help", [["links", 1, ".google.rpc.Help.Link", true]], [messageProto("Link", [["description", 1, T.STRING], ["url", 2, T.STRING]])]),
      messageProto("LocalizedMessage", [["locale", 1, T.STRING], ["message", 2, T.STRING]]),
    ] as DescriptorProto[],
  });
}

/**
 * The standard `google.rpc` error detail types (ErrorInfo, RetryInfo, DebugInfo, QuotaFailure,
 * PreconditionFailure, BadRequest, RequestInfo, ResourceInfo, Help, LocalizedMessage) described at
 * run time, so REST error bodies render them as JSON. Also usable to throw such details:
 * `new ConnectError(msg, Code.InvalidArgument, undefined, [{ desc: errorDetailTypes.badRequest, value: {...} }])`.
 */
export const errorDetailsRegistry: Registry = createFileRegistry(errorDetailsFile(), (name) =>
  name === "google/protobuf/duration.proto" ? file_google_protobuf_duration : undefined,
);

function detailType(typeName: string): DescMessage {
  const desc = errorDetailsRegistry.getMessage(typeName);
  if (desc === undefined) throw new Error(`missing ${typeName}`);
  return desc;
}

/** Descriptors of the most used `google.rpc` error details, from {@link errorDetailsRegistry}. */
export const errorDetailTypes = {
  badRequest: detailType("google.rpc.BadRequest"),
  retryInfo: detailType("google.rpc.RetryInfo"),
  errorInfo: detailType("google.rpc.ErrorInfo"),
  preconditionFailure: detailType("google.rpc.PreconditionFailure"),
  quotaFailure: detailType("google.rpc.QuotaFailure"),
} as const;

const TYPE_URL_PREFIX = "type.googleapis.com/";

/**
 * Renders a ConnectError as a `google.rpc.Status` JSON object. Details become `Any` JSON: decoded
 * with `registry` (plus {@link errorDetailsRegistry}) when the type is known; otherwise the JSON
 * the server attached for debugging (Connect's `debug` field) is used; otherwise the raw bytes go
 * out as `{"@type": ..., "value": "<base64>"}`.
 */
export function statusFromError(err: ConnectError, registry?: Registry): StatusJson {
  const reg = registry === undefined ? errorDetailsRegistry : createRegistry(registry, errorDetailsRegistry);
  const details: JsonObject[] = [];
  for (const detail of err.details) {
    if ("desc" in detail) {
      const value = create(detail.desc, detail.value);
      details.push(anyJson(detail.desc.typeName, toJson(detail.desc, value, { registry: reg }), reg));
      continue;
    }
    const any = create(AnySchema, { typeUrl: TYPE_URL_PREFIX + detail.type, value: detail.value });
    if (reg.getMessage(detail.type) !== undefined) {
      try {
        details.push(toJson(AnySchema, any, { registry: reg }) as JsonObject);
        continue;
      } catch {
        // Bytes that do not decode as the type they claim: fall through to the raw form.
      }
    }
    if (detail.debug !== undefined && detail.debug !== null) {
      details.push(anyJson(detail.type, detail.debug, reg));
    } else {
      details.push({ "@type": TYPE_URL_PREFIX + detail.type, value: Buffer.from(detail.value).toString("base64") });
    }
  }
  return { code: err.code, message: err.rawMessage, details };
}

/** `Any` JSON: the message's fields inline, or under `value` for WKTs whose JSON is not an object. */
function anyJson(typeName: string, json: JsonValue, reg: Registry): JsonObject {
  const type = TYPE_URL_PREFIX + typeName;
  const wkt = typeName.startsWith("google.protobuf.") && reg.getMessage(typeName) !== undefined;
  if (!wkt && typeof json === "object" && json !== null && !Array.isArray(json)) return { "@type": type, ...json };
  return { "@type": type, value: json };
}

/**
 * Seconds a client should wait before retrying, from the error's `google.rpc.RetryInfo` detail
 * or a `retry-after` header/trailer of the call (delta-seconds). Rounded up; undefined when absent.
 */
export function retryAfterSeconds(err: ConnectError): number | undefined {
  for (const info of err.findDetails(errorDetailTypes.retryInfo)) {
    // The descriptor is built at run time, so the decoded message has no static type: name its one field.
    const delay = (info as { retryDelay?: { seconds: bigint; nanos: number } }).retryDelay;
    if (delay !== undefined) {
      const ms = Number(delay.seconds) * 1000 + delay.nanos / 1e6;
      return Math.max(0, Math.ceil(ms / 1000));
    }
  }
  const header = err.metadata.get("retry-after");
  if (header !== null && /^\d+$/.test(header.trim())) return Number(header.trim());
  return undefined;
}
