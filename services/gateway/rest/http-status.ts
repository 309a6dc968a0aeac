/**
 * gRPC status codes ↔ HTTP statuses for REST, and errors as `google.rpc.Status` JSON bodies.
 *
 * The code → status table is grpc-gateway's (`runtime.HTTPStatusFromCode`), so REST clients of
 * taskmesh see what they see in front of any other gRPC service.
 */
import { create, createRegistry, toJson, type JsonObject, type JsonValue, type Registry } from "@bufbuild/protobuf";
import { AnySchema } from "@bufbuild/protobuf/wkt";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  PreconditionFailureSchema,
  QuotaFailureSchema,
  RetryInfoSchema,
  file_google_rpc_error_details,
} from "../../../gen/google/rpc/error_details_pb.js";
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

/** The standard `google.rpc` error detail types (generated from google/rpc/error_details.proto). */
export const errorDetailsRegistry: Registry = createRegistry(file_google_rpc_error_details);

/** Descriptors of the most used `google.rpc` error details. */
export const errorDetailTypes = {
  badRequest: BadRequestSchema,
  retryInfo: RetryInfoSchema,
  errorInfo: ErrorInfoSchema,
  preconditionFailure: PreconditionFailureSchema,
  quotaFailure: QuotaFailureSchema,
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
