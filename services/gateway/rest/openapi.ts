/**
 * OpenAPI 3.0 for the REST API, generated at run time from the same descriptors and
 * `google.api.http` annotations the transcoder serves, so the document cannot drift from the
 * routes. Schemas follow the protobuf JSON mapping the transcoder speaks.
 */
import { ScalarType, type DescEnum, type DescField, type DescMessage, type DescService, type JsonObject } from "@bufbuild/protobuf";
import { JSON_SCALAR_WKT, restBindings, type RestBinding, type TemplateSegment } from "./route-template.js";

/** The `info` (and `servers`) of the generated document. */
export interface OpenApiInfo {
  title: string;
  version: string;
  description?: string;
  /** Base URLs clients use (`https://taskmesh.example.com`); the document has none when absent. */
  servers?: readonly { url: string; description?: string }[];
}

/** The generated OpenAPI document: plain JSON, ready for `JSON.stringify`. */
export type OpenApiDocument = JsonObject;

const STATUS_REF = "#/components/schemas/google.rpc.Status";
const ANY_REF = "#/components/schemas/google.protobuf.Any";

/**
 * Builds an OpenAPI 3.0.3 document for every annotated method of `services`: one operation per
 * binding (`operationId` `Service_Method`, additional bindings `_2`, `_3`…) with its path
 * parameters, query parameters (for fields bound neither by the path nor the body; nested
 * messages flattened as `a.b`, lowerCamelCase like the JSON bodies), request body, a 200 response
 * (NDJSON and SSE for server streams) and a `default` `google.rpc.Status` error. Messages and enums
 * go to `components/schemas` under their full proto names. Security: bearer API key or `x-api-key`.
 */
export function openApiDocument(services: readonly DescService[], info: OpenApiInfo): OpenApiDocument {
  const gen = new SchemaGen();
  const paths: Record<string, JsonObject> = {};
  for (const b of restBindings(services)) {
    const path = openApiPath(b);
    const item = (paths[path] ??= {});
    item[b.httpMethod.toLowerCase()] = operation(b, gen);
  }
  const doc: JsonObject = {
    openapi: "3.0.3",
    info: { title: info.title, version: info.version, ...(info.description === undefined ? {} : { description: info.description }) },
    ...(info.servers === undefined ? {} : { servers: info.servers.map((s) => ({ ...s })) }),
    tags: services.map((s) => ({ name: s.name, description: `gRPC service ${s.typeName}` })),
    security: [{ bearerAuth: [] }, { apiKeyAuth: [] }],
    paths,
    components: {
      schemas: gen.schemas(),
      securitySchemes: {
        bearerAuth: { type: "http", scheme: "bearer", description: "API key as a bearer token: `Authorization: Bearer <key>`" },
        apiKeyAuth: { type: "apiKey", in: "header", name: "x-api-key" },
      },
    },
  };
  return doc;
}

/** The OpenAPI path of a binding: variables as `{field.path}`, the verb kept (`/v1/tasks/{task_id}:cancel`). */
function openApiPath(b: RestBinding): string {
  const segs = b.template.segments;
  const parts: string[] = [];
  for (let i = 0; i < segs.length; ) {
    const v = b.template.variables.find((x) => x.start === i);
    if (v !== undefined) {
      parts.push(`{${v.fieldPath.join(".")}}`);
      i = Math.max(v.end, i + 1);
      continue;
    }
    parts.push(segmentText(segs[i]));
    i++;
  }
  return `/${parts.join("/")}${b.template.verb === undefined ? "" : `:${b.template.verb}`}`;
}

function segmentText(s: TemplateSegment | undefined): string {
  if (s === undefined) return "";
  return s.kind === "literal" ? s.value : s.kind === "wildcard" ? "*" : "**";
}

function operation(b: RestBinding, gen: SchemaGen): JsonObject {
  const parameters: JsonObject[] = [];
  for (const bound of b.pathFields) {
    const leaf = bound.fields[bound.fields.length - 1];
    if (leaf === undefined) continue;
    parameters.push({
      name: bound.variable.fieldPath.join("."),
      in: "path",
      required: true,
      schema: gen.field(leaf),
      ...(bound.variable.multiSegment ? { description: "May span several path segments (contains `/`)." } : {}),
    });
  }
  if (b.body !== "*") {
    const skip = new Set<DescField>([...b.pathFields.map((p) => p.fields).filter((f) => f.length === 1).flat(), ...(b.bodyField ? [b.bodyField] : [])]);
    const nestedPath = b.pathFields.filter((p) => p.fields.length > 1).map((p) => p.fields.map((f) => f.jsonName).join("."));
    for (const q of queryParameters(b.method.input, "", skip, new Set([b.method.input.typeName]), gen)) {
      if (nestedPath.includes(q.name as string)) continue;
      parameters.push(q);
    }
  }
  const op: JsonObject = {
    operationId: `${b.service.name}_${b.method.name}${b.bindingIndex === 0 ? "" : `_${b.bindingIndex + 1}`}`,
    summary: b.method.name,
    tags: [b.service.name],
    parameters,
    responses: {
      "200": success(b, gen),
      default: { description: "An error, as a google.rpc.Status.", content: { "application/json": { schema: { $ref: STATUS_REF } } } },
    },
  };
  const body = requestBody(b, gen);
  if (body !== undefined) op.requestBody = body;
  return op;
}

function requestBody(b: RestBinding, gen: SchemaGen): JsonObject | undefined {
  if (b.body === "") return undefined;
  let schema: JsonObject;
  if (b.bodyField !== undefined) {
    schema = gen.field(b.bodyField);
  } else {
    const bound = new Set(b.pathFields.filter((p) => p.fields.length === 1).map((p) => p.fields[0]));
    if (bound.size === 0) {
      schema = gen.message(b.method.input);
    } else {
      // The message without the fields the path sets (they may still be sent; they must agree).
      const properties: JsonObject = {};
      for (const f of b.method.input.fields) if (!bound.has(f)) properties[f.jsonName] = gen.field(f);
      schema = { type: "object", properties };
    }
  }
  return { required: b.body === "*", content: { "application/json": { schema } } };
}

function success(b: RestBinding, gen: SchemaGen): JsonObject {
  const schema = b.responseBodyField === undefined ? gen.message(b.method.output) : gen.field(b.responseBodyField);
  if (b.method.methodKind !== "server_streaming") {
    return { description: "OK", content: { "application/json": { schema } } };
  }
  return {
    description:
      "A stream: newline-delimited JSON, one `{\"result\": message}` per line and `{\"error\": status}` last on failure; " +
      "or Server-Sent Events with `Accept: text/event-stream` (`data:` per message, `event: error` on failure).",
    content: {
      "application/x-ndjson": { schema: { type: "object", properties: { result: schema, error: { $ref: STATUS_REF } } } },
      "text/event-stream": { schema: { type: "string" } },
    },
  };
}

/** Query parameters for the fields of `msg` (recursively, nested fields as `a.b`), except `skip`. */
function queryParameters(msg: DescMessage, prefix: string, skip: ReadonlySet<DescField>, stack: Set<string>, gen: SchemaGen): JsonObject[] {
  const out: JsonObject[] = [];
  for (const f of msg.fields) {
    if (skip.has(f)) continue;
    const name = prefix + f.jsonName;
    if (f.fieldKind === "map") continue;
    const nested = f.fieldKind === "message" && !JSON_SCALAR_WKT.has(f.message.typeName) ? f.message : undefined;
    if (nested !== undefined) {
      if (stack.has(nested.typeName)) continue;
      stack.add(nested.typeName);
      out.push(...queryParameters(nested, `${name}.`, skip, stack, gen));
      stack.delete(nested.typeName);
      continue;
    }
    if (f.fieldKind === "list" && f.listKind === "message" && !JSON_SCALAR_WKT.has(f.message.typeName)) continue;
    out.push({
      name,
      in: "query",
      required: false,
      schema: gen.field(f),
      ...(f.fieldKind === "list" ? { style: "form", explode: true, description: "Repeat the parameter for several values." } : {}),
    });
  }
  return out;
}


/** Collects component schemas while handing out references to them. */
class SchemaGen {
  readonly #schemas = new Map<string, JsonObject>();

  constructor() {
    this.#schemas.set("google.protobuf.Any", {
      type: "object",
      description: "A message of any type, named by `@type`; its fields sit beside it.",
      properties: { "@type": { type: "string" } },
      additionalProperties: true,
    });
    this.#schemas.set("google.rpc.Status", {
      type: "object",
      description: "An error: the gRPC code (a number), a message and typed details (google.rpc.BadRequest, RetryInfo…).",
      properties: {
        code: { type: "integer", format: "int32" },
        message: { type: "string" },
        details: { type: "array", items: { $ref: ANY_REF } },
      },
      required: ["code", "message"],
    });
  }

  /** All schemas referenced so far, sorted by name. */
  schemas(): JsonObject {
    return Object.fromEntries([...this.#schemas.entries()].sort(([a], [b]) => a.localeCompare(b)));
  }

  /** The schema of a message-typed value: inline for well-known types, otherwise a `$ref`. */
  message(desc: DescMessage): JsonObject {
    const wkt = wellKnown(desc);
    if (wkt !== undefined) return wkt;
    if (!this.#schemas.has(desc.typeName)) {
      const properties: JsonObject = {};
      const schema: JsonObject = { type: "object", properties };
      // Registered before the fields so recursive messages end in a $ref.
      this.#schemas.set(desc.typeName, schema);
      for (const f of desc.fields) properties[f.jsonName] = this.field(f);
      const oneofs = desc.oneofs.filter((o) => o.fields.every((f) => f.proto.proto3Optional !== true));
      if (oneofs.length > 0) {
        schema.description = oneofs.map((o) => `At most one of ${o.fields.map((f) => `\`${f.jsonName}\``).join(", ")} (oneof ${o.name}).`).join(" ");
      }
    }
    return { $ref: `#/components/schemas/${desc.typeName}` };
  }

  /** A `$ref` to an enum's schema: its value names as strings. */
  enumRef(desc: DescEnum): JsonObject {
    if (!this.#schemas.has(desc.typeName)) {
      this.#schemas.set(desc.typeName, {
        type: "string",
        enum: desc.values.map((v) => v.name),
        default: desc.values[0]?.name ?? null,
        description: "Sent as the value's name; its number is accepted in requests.",
      });
    }
    return { $ref: `#/components/schemas/${desc.typeName}` };
  }

  /** The schema of one field (list and map fields included). */
  field(f: DescField): JsonObject {
    switch (f.fieldKind) {
      case "scalar":
        return scalarSchema(f.scalar);
      case "enum":
        return this.enumRef(f.enum);
      case "message":
        return this.message(f.message);
      case "list": {
        const items = f.listKind === "scalar" ? scalarSchema(f.scalar) : f.listKind === "enum" ? this.enumRef(f.enum) : this.message(f.message);
        return { type: "array", items };
      }
      case "map": {
        const value = f.mapKind === "scalar" ? scalarSchema(f.scalar) : f.mapKind === "enum" ? this.enumRef(f.enum) : this.message(f.message);
        return { type: "object", additionalProperties: value };
      }
    }
  }
}

/** Protobuf JSON of scalars: 64-bit integers are strings, bytes base64. */
function scalarSchema(t: ScalarType): JsonObject {
  switch (t) {
    case ScalarType.DOUBLE:
      return { type: "number", format: "double" };
    case ScalarType.FLOAT:
      return { type: "number", format: "float" };
    case ScalarType.INT32:
    case ScalarType.SINT32:
    case ScalarType.SFIXED32:
      return { type: "integer", format: "int32" };
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      return { type: "integer", format: "int64", minimum: 0 };
    case ScalarType.INT64:
    case ScalarType.SINT64:
    case ScalarType.SFIXED64:
      return { type: "string", format: "int64" };
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
      return { type: "string", format: "uint64" };
    case ScalarType.BOOL:
      return { type: "boolean" };
    case ScalarType.STRING:
      return { type: "string" };
    case ScalarType.BYTES:
      return { type: "string", format: "byte" };
  }
}

const WRAPPERS: Record<string, ScalarType> = {
  "google.protobuf.DoubleValue": ScalarType.DOUBLE,
  "google.protobuf.FloatValue": ScalarType.FLOAT,
  "google.protobuf.Int64Value": ScalarType.INT64,
  "google.protobuf.UInt64Value": ScalarType.UINT64,
  "google.protobuf.Int32Value": ScalarType.INT32,
  "google.protobuf.UInt32Value": ScalarType.UINT32,
  "google.protobuf.BoolValue": ScalarType.BOOL,
  "google.protobuf.StringValue": ScalarType.STRING,
  "google.protobuf.BytesValue": ScalarType.BYTES,
};

/** Inline schemas for the well-known types with a special JSON form; undefined for others. */
function wellKnown(desc: DescMessage): JsonObject | undefined {
  const wrapped = WRAPPERS[desc.typeName];
  if (wrapped !== undefined) return { ...scalarSchema(wrapped), nullable: true };
  switch (desc.typeName) {
    case "google.protobuf.Timestamp":
      return { type: "string", format: "date-time", example: "2024-01-02T03:04:05.678Z" };
    case "google.protobuf.Duration":
      return {
        type: "string",
        format: "google-duration",
        pattern: "^-?[0-9]+(\\.[0-9]{1,9})?s$",
        example: "1.5s",
        description: "Seconds with up to 9 decimals, suffixed with `s`.",
      };
    case "google.protobuf.FieldMask":
      return { type: "string", description: "Comma-separated lowerCamelCase field paths." };
    case "google.protobuf.Struct":
      return { type: "object", additionalProperties: true };
    case "google.protobuf.Value":
      return { description: "Any JSON value." };
    case "google.protobuf.ListValue":
      return { type: "array", items: {} };
    case "google.protobuf.Empty":
      return { type: "object" };
    case "google.protobuf.Any":
      return { $ref: ANY_REF };
  }
  return undefined;
}
