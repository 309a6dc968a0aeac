/**
 * REST+JSON transcoding for the gateway: serves every method that carries a `google.api.http`
 * annotation as an HTTP/JSON endpoint, by calling it through a connect `Transport` (the gateway
 * passes a router transport over its own implementations and interceptors, so auth, rate limits
 * and metrics run for REST exactly as for gRPC). Also serves `GET /openapi.json` and CORS.
 */
import { once } from "node:events";
import * as http from "node:http";
import {
  createRegistry,
  fromJson,
  merge,
  ScalarType,
  toJson,
  type DescField,
  type DescFile,
  type DescMessage,
  type DescMethodServerStreaming,
  type DescMethodUnary,
  type DescService,
  type JsonObject,
  type JsonValue,
  type Message,
  type Registry,
} from "@bufbuild/protobuf";
import { reflect, type ReflectMessage } from "@bufbuild/protobuf/reflect";
import { Code, ConnectError, type Transport } from "@connectrpc/connect";
import { toConnectError } from "../../../lib/errors.js";
import type { Logger } from "../../../lib/logger.js";
import type { HttpRequest, HttpResponse } from "../../../lib/server.js";
import { VERSION } from "../../../lib/version.js";
import { httpStatusFromCode, retryAfterSeconds, statusFromError, type StatusJson } from "./http-status.js";
import { openApiDocument, type OpenApiInfo } from "./openapi.js";
import { LIMITS, jsonDepth } from "../../../lib/task-types.js";
import { JSON_SCALAR_WKT, PathDecodeError, RestRouter, findField, restBindings, type RestBinding } from "./route-template.js";

/** Default largest request body: a 1 MiB task payload plus room for the rest of the request. */
export const DEFAULT_MAX_BODY_BYTES = 1024 * 1024 + 64 * 1024;

/**
 * Request headers passed on to the called method by default: credentials, trace context and
 * request ids. Nothing else is forwarded (a client must not be able to set internal headers such
 * as the tenant header).
 */
export const DEFAULT_FORWARDED_HEADERS: readonly string[] = [
  "authorization",
  "x-api-key",
  "traceparent",
  "tracestate",
  "baggage",
  "x-request-id",
  "user-agent",
];

/** Request headers a browser may send cross-origin (REST, Connect and gRPC-Web). */
export const CORS_ALLOWED_HEADERS: readonly string[] = [
  "authorization",
  "x-api-key",
  "content-type",
  "accept",
  "connect-protocol-version",
  "connect-timeout-ms",
  "connect-accept-encoding",
  "connect-content-encoding",
  "grpc-timeout",
  "x-grpc-web",
  "x-user-agent",
  "x-request-id",
  "traceparent",
  "tracestate",
];

/** Response headers a browser script may read cross-origin. */
export const CORS_EXPOSED_HEADERS: readonly string[] = [
  "grpc-status",
  "grpc-message",
  "grpc-status-details-bin",
  "retry-after",
  "x-request-id",
];

/** Cross-origin resource sharing for browsers. */
export interface CorsOptions {
  /** Origins allowed to call (`https://app.example.com`); `"*"` (alone or in the list) allows any. */
  allowedOrigins: readonly string[] | "*";
  /** Send `Access-Control-Allow-Credentials: true` (the origin is then echoed, never `*`). @default false */
  allowCredentials?: boolean;
  /** How long browsers may cache a preflight answer. @default 7200 */
  maxAgeSeconds?: number;
}

/** A plain HTTP handler in the shape of `ServerOptions.httpFallback`: true when it answered. */
export type HttpHandler = (req: HttpRequest, res: HttpResponse) => boolean;

/**
 * Returns a CORS step to run on every request before it is routed: it adds the CORS response
 * headers when the `Origin` is allowed, and answers preflights (`OPTIONS` with
 * `Access-Control-Request-Method`) itself with 204 (allowed origin) or 403 (not allowed),
 * returning true then. It is what {@link createRestHandler} uses; the Connect and gRPC-Web paths
 * need it too, but connect-node answers an `OPTIONS` to an RPC path with 405 and never calls the
 * fallback for it, so the server must run this step before the RPC handler (see the report).
 */
export function createCorsHandler(opts: CorsOptions): HttpHandler {
  const any = opts.allowedOrigins === "*" || opts.allowedOrigins.includes("*");
  const origins = new Set(opts.allowedOrigins === "*" ? [] : opts.allowedOrigins);
  const credentials = opts.allowCredentials ?? false;
  const maxAge = String(opts.maxAgeSeconds ?? 7200);
  const allowHeaders = CORS_ALLOWED_HEADERS.join(", ");
  const exposeHeaders = CORS_EXPOSED_HEADERS.join(", ");
  return (req, res) => {
    const origin = header(req, "origin");
    const r = asH1(res);
    const preflight = req.method === "OPTIONS" && origin !== undefined && header(req, "access-control-request-method") !== undefined;
    if (origin === undefined) return false;
    const allowed = any || origins.has(origin);
    // The answer depends on the origin unless it is a plain "*": caches must key on it.
    if (!any || credentials) r.setHeader("vary", "Origin");
    if (allowed) {
      r.setHeader("access-control-allow-origin", any && !credentials ? "*" : origin);
      if (credentials) r.setHeader("access-control-allow-credentials", "true");
    }
    if (!preflight) {
      if (allowed) r.setHeader("access-control-expose-headers", exposeHeaders);
      return false;
    }
    if (!allowed) {
      sendStatus(res, 403, { code: Code.PermissionDenied, message: `origin ${origin} is not allowed`, details: [] });
      return true;
    }
    r.setHeader("access-control-allow-methods", "GET, POST, PUT, PATCH, DELETE, OPTIONS");
    r.setHeader("access-control-allow-headers", allowHeaders);
    r.setHeader("access-control-max-age", maxAge);
    r.writeHead(204);
    r.end();
    return true;
  };
}

/** Options for {@link createRestHandler}. */
export interface RestHandlerOptions {
  /** Services whose `google.api.http` annotations become routes. */
  services: readonly DescService[];
  /** How methods are invoked: the gateway passes `createRouterTransport(routes, { router: { interceptors } })`. */
  transport: Transport;
  logger: Logger;
  /** Largest request body; a larger one gets 413 with an INVALID_ARGUMENT status. @default DEFAULT_MAX_BODY_BYTES (1 MiB + 64 KiB) */
  maxBodyBytes?: number | (() => number);
  /** CORS for browsers; none when absent (no CORS headers, preflights get no CORS answer). */
  cors?: CorsOptions;
  /** Request headers passed on as call headers (lower case). @default DEFAULT_FORWARDED_HEADERS */
  forwardHeaders?: readonly string[];
  /** The `info` of the OpenAPI document served at `GET /openapi.json`; false to not serve it. @default { title: "taskmesh", version: VERSION } */
  openApi?: OpenApiInfo | false;
  /**
   * How long a server stream may stay silent before its HTTP head (200) goes out. An error within
   * this time is answered with its own HTTP status and a `google.rpc.Status` body; a later error
   * arrives in-band (an `{"error": ...}` line or an SSE `error` event). @default 1000
   */
  streamHeadWaitMs?: number;
  /** Interval of SSE comment lines that keep idle streams open through proxies; 0 turns them off. @default 15000 */
  sseHeartbeatMs?: number;
  /**
   * Ignore JSON body fields the request message does not have (grpc-gateway's default) instead of
   * answering 400 naming the field. @default false
   */
  ignoreUnknownBodyFields?: boolean;
  /**
   * Return false for paths no route matches (so another handler can take them; the server then
   * answers its own 404) instead of answering 404 with a `google.rpc.Status` body. @default false
   */
  passUnmatched?: boolean;
  /** Types for `google.protobuf.Any` fields and error details beyond the services' own files and the google.rpc details. */
  registry?: Registry;
}

/**
 * Builds the REST handler for `ServerOptions.httpFallback`. Routes are read from the services'
 * annotations once, here (an annotation that cannot be served throws now, not at request time).
 *
 * Requests: path variables, query parameters (bodiless routes; repeated fields by repeating the
 * parameter, nested fields with dots, names in proto or JSON form, values by protobuf JSON rules:
 * enums by name or number, Duration `1.5s`, Timestamp RFC 3339) and the JSON body (`body: "*"` or
 * one field) make the request message. Responses are protobuf JSON with lowerCamelCase names and
 * default values included (grpc-gateway v2's defaults); `response_body` is honoured. Server
 * streams are NDJSON (`{"result": msg}` per line, `{"error": status}` last on failure,
 * grpc-gateway's framing) or, with `Accept: text/event-stream`, SSE (`data: msg`, `event: error`).
 * Errors are `google.rpc.Status` JSON with grpc-gateway's status mapping.
 *
 * Wiring (gateway `main.ts`): the same routes and interceptors serve RPC and REST —
 *
 *     const interceptors = [bootstrapAuth(key)];
 *     const rest = createRestHandler({
 *       services: [TaskService, ClusterService, ConfigService, ScheduleService],
 *       transport: createRouterTransport(routes, { router: { interceptors: [rpcMetricsInterceptor(registry, "gateway"), ...interceptors] } }),
 *       logger,
 *     });
 *     await startServer({ ..., routes, registry, interceptors, httpFallback: rest });
 */
export function createRestHandler(opts: RestHandlerOptions): HttpHandler {
  const log = opts.logger.child({ component: "rest" });
  const router = new RestRouter(restBindings(opts.services));
  const registry = createRegistry(...opts.services.flatMap((s) => withDependencies(s.file)), ...(opts.registry ? [opts.registry] : []));
  const limit = opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  const maxBody = typeof limit === "number" ? () => limit : limit;
  const forward = (opts.forwardHeaders ?? DEFAULT_FORWARDED_HEADERS).map((h) => h.toLowerCase());
  const cors = opts.cors === undefined ? undefined : createCorsHandler(opts.cors);
  const headWait = opts.streamHeadWaitMs ?? 1000;
  const heartbeat = opts.sseHeartbeatMs ?? 15_000;
  const readOptions = { ignoreUnknownFields: opts.ignoreUnknownBodyFields ?? false };
  let openApiJson: string | undefined;
  const openApi = (): string => {
    const info = opts.openApi === false || opts.openApi === undefined ? { title: "taskmesh", version: VERSION } : opts.openApi;
    openApiJson ??= JSON.stringify(openApiDocument(opts.services, info));
    return openApiJson;
  };
  const ctx: CallContext = { log, transport: opts.transport, registry, maxBody, forward, headWait, heartbeat, readOptions };

  return (req, res) => {
    const method = req.method ?? "GET";
    const url = req.url ?? "/";
    const q = url.indexOf("?");
    const path = q < 0 ? url : url.slice(0, q);
    const search = q < 0 ? "" : url.slice(q + 1);
    if (cors?.(req, res) === true) return true;

    if (opts.openApi !== false && path === "/openapi.json" && (method === "GET" || method === "HEAD")) {
      sendBody(res, 200, "application/json", openApi(), method === "HEAD");
      return true;
    }
    let match;
    try {
      match = router.match(method, path);
    } catch (err) {
      if (!(err instanceof PathDecodeError)) throw err;
      sendStatus(res, 400, { code: Code.InvalidArgument, message: err.message, details: [] });
      return true;
    }
    switch (match.kind) {
      case "not-found":
        if (opts.passUnmatched === true) return false;
        sendStatus(res, 404, { code: Code.NotFound, message: `no route for ${method} ${path}`, details: [] });
        return true;
      case "method-not-allowed": {
        const allow = [...match.allow, "OPTIONS"].join(", ");
        asH1(res).setHeader("allow", allow);
        if (method === "OPTIONS") {
          asH1(res).writeHead(204);
          asH1(res).end();
        } else {
          sendStatus(res, 405, { code: Code.Unimplemented, message: `method ${method} not allowed for ${path} (allowed: ${allow})`, details: [] });
        }
        return true;
      }
      case "match":
        serve(ctx, match.binding, match.captures, search, req, res).catch((err: unknown) => {
          log.error({ err, method, path }, "rest handler failed");
          if (!res.headersSent) sendStatus(res, 500, { code: Code.Internal, message: "internal error", details: [] });
          else res.destroy();
        });
        return true;
    }
  };
}

/** Everything a request needs from the handler's set-up. */
interface CallContext {
  log: Logger;
  transport: Transport;
  registry: Registry;
  maxBody: () => number;
  forward: readonly string[];
  headWait: number;
  heartbeat: number;
  readOptions: { ignoreUnknownFields: boolean };
}

function withDependencies(file: DescFile, seen = new Set<string>()): DescFile[] {
  if (seen.has(file.name)) return [];
  seen.add(file.name);
  return [file, ...file.dependencies.flatMap((d) => withDependencies(d, seen))];
}

async function serve(
  ctx: CallContext,
  binding: RestBinding,
  captures: ReadonlyMap<string, string>,
  search: string,
  req: HttpRequest,
  res: HttpResponse,
): Promise<void> {
  const r = asH1(res);
  const abort = new AbortController();
  r.on("error", (err) => ctx.log.debug({ err }, "rest response error"));
  r.once("close", () => {
    if (!r.writableFinished) abort.abort(new ConnectError("client closed the connection", Code.Canceled));
  });
  try {
    let bodyJson: JsonValue | undefined;
    if (binding.body !== "") {
      const body = await readBody(req, ctx.maxBody());
      if (body === "too-large") {
        if (req.httpVersionMajor === 1) r.setHeader("connection", "close");
        sendStatus(res, 413, { code: Code.InvalidArgument, message: `request body is larger than ${ctx.maxBody()} bytes`, details: [] });
        return;
      }
      bodyJson = parseJsonBody(body);
    }
    const message = buildRequestMessage(binding, captures, new URLSearchParams(search), bodyJson, ctx.readOptions);
    const headers = callHeaders(req, ctx.forward);
    const timeoutMs = parseGrpcTimeout(header(req, "grpc-timeout"));
    const method = binding.method;
    if (method.methodKind === "unary") {
      // DescMethod is not a union on methodKind: the check above is what makes this cast true.
      const response = await ctx.transport.unary(method as DescMethodUnary, abort.signal, timeoutMs, headers, message);
      sendBody(res, 200, "application/json", JSON.stringify(responseJson(ctx, binding, response.message)), false);
      return;
    }
    if (method.methodKind !== "server_streaming") throw new Error(`${method.methodKind} cannot be transcoded`);
    const sse = (header(req, "accept") ?? "").includes("text/event-stream");
    // Not awaited here: a connect stream may resolve only with its first message, and the head
    // must still go out after streamHeadWaitMs.
    const messages = ctx.transport
      .stream(method as DescMethodServerStreaming, abort.signal, timeoutMs, headers, single(message))
      .then((response) => response.message[Symbol.asyncIterator]());
    await pipeStream(ctx, binding, messages, sse, req, res, abort);
  } catch (err) {
    if (abort.signal.aborted) {
      ctx.log.debug({ method: binding.method.name }, "rest client went away");
      return;
    }
    const error = toConnectError(err, ctx.log, { method: binding.method.name });
    if (res.headersSent) throw error;
    sendError(ctx, res, error);
  }
}

async function* single<T>(value: T): AsyncIterable<T> {
  yield value;
}

/** Streams messages as NDJSON or SSE; the head waits for the first message, an error or `headWait`. */
async function pipeStream(
  ctx: CallContext,
  binding: RestBinding,
  messages: Promise<AsyncIterator<Message>>,
  sse: boolean,
  req: HttpRequest,
  res: HttpResponse,
  abort: AbortController,
): Promise<void> {
  const r = asH1(res);
  let it: AsyncIterator<Message> | undefined;
  let started = false;
  let finished = false;
  let ping: NodeJS.Timeout | undefined;
  const write = async (chunk: string): Promise<void> => {
    if (!r.write(chunk)) await once(r, "drain", { signal: abort.signal });
  };
  const start = (): void => {
    started = true;
    r.writeHead(200, {
      "content-type": sse ? "text/event-stream; charset=utf-8" : "application/x-ndjson",
      "cache-control": "no-cache",
      "x-accel-buffering": "no",
    });
    if (req.httpVersionMajor === 1) {
      req.socket.setNoDelay(true);
      r.flushHeaders();
      // halfClosedLeft: a client that shut its side down before the stream's head came is taken
      // to have left (lib/server.ts answers half-closed clients of unary calls only).
      if (req.socket.readableEnded) req.socket.destroy();
    }
    if (sse && ctx.heartbeat > 0) {
      ping = setInterval(() => r.write(": keep-alive\n\n"), ctx.heartbeat);
      ping.unref();
    }
  };
  try {
    const first = messages.then((iterator) => {
      it = iterator;
      return iterator.next();
    });
    // Handled below: this only keeps the rejection from being reported as unhandled meanwhile.
    first.catch(() => undefined);
    if (!(await settlesWithin(first, ctx.headWait))) start();
    try {
      for (let next = await first; next.done !== true && it !== undefined; next = await it.next()) {
        if (!started) start();
        const json = responseJson(ctx, binding, next.value);
        await write(sse ? `data: ${JSON.stringify(json)}\n\n` : `${JSON.stringify({ result: json })}\n`);
      }
    } catch (err) {
      if (abort.signal.aborted) throw err;
      const error = toConnectError(err, ctx.log, { method: binding.method.name });
      if (!started) {
        finished = true;
        sendError(ctx, res, error);
        return;
      }
      logFailure(ctx, error);
      const status = statusFromError(error, ctx.registry);
      await write(sse ? `event: error\ndata: ${JSON.stringify(status)}\n\n` : `${JSON.stringify({ error: status })}\n`);
    }
    if (!started) start();
    finished = true;
    r.end();
  } finally {
    clearInterval(ping);
    // Stopped early (client gone, write failed): cancel the call upstream.
    if (!finished) abort.abort(new ConnectError("stream abandoned", Code.Canceled));
  }
}

function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.then(
      () => true,
      () => true,
    ),
    new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), ms);
      timer.unref();
    }),
  ]).finally(() => clearTimeout(timer));
}

function responseJson(ctx: CallContext, binding: RestBinding, message: Message): JsonValue {
  const json = toJson(binding.method.output, message, { alwaysEmitImplicit: true, registry: ctx.registry });
  const field = binding.responseBodyField;
  if (field === undefined) return json;
  return (json as JsonObject)[field.jsonName] ?? null;
}

function sendError(ctx: CallContext, res: HttpResponse, error: ConnectError): void {
  logFailure(ctx, error);
  const r = asH1(res);
  const retryAfter = retryAfterSeconds(error);
  if (retryAfter !== undefined) r.setHeader("retry-after", String(retryAfter));
  if (error.code === Code.Unauthenticated) r.setHeader("www-authenticate", 'Bearer realm="taskmesh"');
  sendStatus(res, httpStatusFromCode(error.code), statusFromError(error, ctx.registry));
}

function logFailure(ctx: CallContext, error: ConnectError): void {
  if (httpStatusFromCode(error.code) >= 500) ctx.log.warn({ code: Code[error.code], err: error }, "rest call failed");
}

// --- request message -------------------------------------------------------------------------

/** How {@link buildRequestMessage} reads JSON bodies. */
export interface BodyReadOptions {
  /** Drop unknown body fields instead of failing. */
  ignoreUnknownFields: boolean;
}

/**
 * Builds a request message from the parts of an HTTP request, per `google/api/http.proto`:
 * the body (whole message for `body: "*"`, one field for `body: "field"`), then the path
 * variables (which must agree with a value the body gives the same field), then — for fields
 * bound neither by the path nor the body — query parameters. Throws an INVALID_ARGUMENT
 * ConnectError naming the parameter or field at fault: an unknown query parameter, one that
 * targets a path- or body-bound field, a singular field given twice, a value that is not valid
 * protobuf JSON for its field, an unknown enum number, or a body that does not fit the message.
 */
export function buildRequestMessage(
  binding: RestBinding,
  captures: ReadonlyMap<string, string>,
  query: URLSearchParams,
  body: JsonValue | undefined,
  options: BodyReadOptions = { ignoreUnknownFields: false },
): Message {
  const input = binding.method.input;
  const pathJson: JsonObject = {};
  const pathValues = new Map<string, string>();
  for (const bound of binding.pathFields) {
    const label = bound.variable.fieldPath.join(".");
    const raw = captures.get(label);
    if (raw === undefined) continue;
    pathValues.set(label, raw);
    const leaf = bound.fields[bound.fields.length - 1];
    if (leaf === undefined) continue;
    const value = leafJson(leaf, [raw], `path variable ${label}`);
    setNested(pathJson, bound.fields, value);
  }

  const queryJson: JsonObject = {};
  for (const name of new Set(query.keys())) {
    const fields = resolveFieldPath(input, name);
    if (fields === undefined) throw invalid(`unknown query parameter ${JSON.stringify(name)}`);
    if (binding.body === "*" || (binding.bodyField !== undefined && fields[0] === binding.bodyField)) {
      throw invalid(`query parameter ${JSON.stringify(name)} sets a field that is bound to the request body`);
    }
    for (const bound of binding.pathFields) {
      if (bound.fields.every((f, i) => fields[i] === f) || fields.every((f, i) => bound.fields[i] === f)) {
        throw invalid(`query parameter ${JSON.stringify(name)} sets a field that is bound to the path`);
      }
    }
    const leaf = fields[fields.length - 1];
    if (leaf === undefined) continue;
    setNested(queryJson, fields, leafJson(leaf, query.getAll(name), `query parameter ${JSON.stringify(name)}`));
  }

  let message: Message;
  try {
    message = fromJson(input, deepMerge(queryJson, pathJson));
  } catch (err) {
    throw invalid(`invalid query parameters: ${(err as Error).message}`);
  }
  if (binding.body === "") return message;

  let bodyMessage: Message;
  try {
    if (binding.body === "*") {
      bodyMessage = fromJson(input, body ?? {}, options);
    } else {
      const field = binding.bodyField;
      if (field === undefined) throw new Error(`body field ${binding.body} missing`);
      bodyMessage = fromJson(input, body === undefined ? {} : { [field.jsonName]: body }, options);
    }
  } catch (err) {
    throw invalid(`invalid request body: ${(err as Error).message}`);
  }
  // A field both in the body and in the path: the values must agree.
  for (const bound of binding.pathFields) {
    const fromBody = readPath(reflect(input, bodyMessage), bound.fields);
    const fromPath = readPath(reflect(input, message), bound.fields);
    const label = bound.variable.fieldPath.join(".");
    if (fromBody !== undefined && fromBody !== fromPath) {
      throw invalid(`${label}: the body says ${JSON.stringify(String(fromBody))} but the path says ${JSON.stringify(pathValues.get(label) ?? "")}`);
    }
  }
  merge(input, bodyMessage, message);
  return bodyMessage;
}

function invalid(message: string): ConnectError {
  return new ConnectError(message, Code.InvalidArgument);
}

/** Resolves a dotted parameter name (`backoff.initial`, `page_size` or `pageSize`) to fields. */
function resolveFieldPath(input: DescMessage, name: string): DescField[] | undefined {
  const fields: DescField[] = [];
  let msg: DescMessage | undefined = input;
  for (const part of name.split(".")) {
    if (msg === undefined) return undefined;
    const f = findField(msg, part);
    if (f === undefined) return undefined;
    fields.push(f);
    msg = f.fieldKind === "message" && !JSON_SCALAR_WKT.has(f.message.typeName) ? f.message : undefined;
  }
  return fields;
}


/**
 * The protobuf JSON value for a path or query leaf given its raw string value(s). Numbers go as
 * strings (protobuf JSON accepts quoted numbers for every numeric type); bools accept
 * true/false/1/0; enums a name or a known number. The value is checked against the field now, so
 * the error names the parameter.
 */
function leafJson(field: DescField, raws: readonly string[], what: string): JsonValue {
  let value: JsonValue;
  switch (field.fieldKind) {
    case "scalar":
    case "enum":
    case "message":
      if (raws.length > 1) throw invalid(`${what} is given more than once but its field is not repeated`);
      value = singleJson(field, raws[0] ?? "", what);
      break;
    case "list":
      value = raws.map((raw) => singleJson(field, raw, what));
      break;
    case "map":
      throw invalid(`${what}: map fields cannot be set from a query parameter`);
  }
  try {
    fromJson(field.parent, { [field.jsonName]: value });
  } catch (err) {
    throw invalid(`${what}: ${(err as Error).message}`);
  }
  return value;
}

function singleJson(field: DescField, raw: string, what: string): JsonValue {
  if (field.enum !== undefined) {
    if (!/^-?\d+$/.test(raw)) return raw;
    const n = Number(raw);
    if (!field.enum.values.some((v) => v.number === n)) throw invalid(`${what}: ${raw} is not a value of ${field.enum.typeName}`);
    return n;
  }
  if (field.message !== undefined) {
    const typeName = field.message.typeName;
    if (!JSON_SCALAR_WKT.has(typeName)) throw invalid(`${what}: ${typeName} fields cannot be set from a query parameter`);
    return typeName === "google.protobuf.BoolValue" ? boolJson(raw) : raw;
  }
  if (field.scalar === ScalarType.BOOL) return boolJson(raw);
  return raw;
}

function boolJson(raw: string): JsonValue {
  const lower = raw.toLowerCase();
  if (lower === "true" || lower === "1") return true;
  if (lower === "false" || lower === "0") return false;
  return raw;
}

function setNested(target: JsonObject, fields: readonly DescField[], value: JsonValue): void {
  let obj = target;
  fields.forEach((f, i) => {
    if (i === fields.length - 1) {
      obj[f.jsonName] = value;
      return;
    }
    const next = obj[f.jsonName];
    if (typeof next === "object" && next !== null && !Array.isArray(next)) {
      obj = next;
    } else {
      const created: JsonObject = {};
      obj[f.jsonName] = created;
      obj = created;
    }
  });
}

function deepMerge(a: JsonObject, b: JsonObject): JsonObject {
  const out: JsonObject = { ...a };
  for (const [k, v] of Object.entries(b)) {
    const prev = out[k];
    const bothObjects =
      typeof prev === "object" && prev !== null && !Array.isArray(prev) && typeof v === "object" && v !== null && !Array.isArray(v);
    out[k] = bothObjects ? deepMerge(prev, v) : v;
  }
  return out;
}

/** The value at a field path, or undefined when any field on the way is unset. */
function readPath(msg: ReflectMessage, fields: readonly DescField[]): unknown {
  let cur = msg;
  for (let i = 0; i < fields.length; i++) {
    const f = fields[i];
    if (f === undefined || !cur.isSet(f)) return undefined;
    if (i === fields.length - 1) return cur.get(f);
    const next = cur.get(f);
    if (f.fieldKind !== "message") return undefined;
    cur = next as ReflectMessage;
  }
  return undefined;
}

// --- HTTP plumbing ---------------------------------------------------------------------------

/** Both response types share the members used here; only their overload lists differ. */
function asH1(res: HttpResponse): http.ServerResponse {
  return res as http.ServerResponse;
}

function header(req: HttpRequest, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v.join(", ") : v;
}

function callHeaders(req: HttpRequest, names: readonly string[]): Headers {
  const out = new Headers();
  for (const name of names) {
    const v = req.headers[name];
    if (typeof v === "string") out.set(name, v);
    else if (Array.isArray(v)) for (const item of v) out.append(name, item);
  }
  return out;
}

const GRPC_TIMEOUT_UNITS: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 0.001, n: 0.000001 };

/** A `grpc-timeout` header (`5S`, `250m`) in milliseconds; undefined when absent or malformed. */
function parseGrpcTimeout(value: string | undefined): number | undefined {
  const m = value === undefined ? null : /^(\d{1,8})([HMSmun])$/.exec(value.trim());
  if (m === null) return undefined;
  const unit = GRPC_TIMEOUT_UNITS[m[2] ?? ""];
  return unit === undefined ? undefined : Math.max(1, Math.ceil(Number(m[1]) * unit));
}

function readBody(req: HttpRequest, limit: number): Promise<Buffer | "too-large"> {
  const declared = Number(header(req, "content-length") ?? Number.NaN);
  if (Number.isFinite(declared) && declared > limit) return Promise.resolve("too-large");
  const encoding = header(req, "content-encoding");
  if (encoding !== undefined && encoding.toLowerCase() !== "identity") {
    return Promise.reject(invalid(`content-encoding ${encoding} is not supported`));
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const cleanup = (): void => {
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("error", onError);
      req.off("close", onClose);
    };
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size > limit) {
        // Stop reading but keep the socket: the 413 still has to go out.
        cleanup();
        req.pause();
        resolve("too-large");
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = (): void => {
      cleanup();
      resolve(Buffer.concat(chunks));
    };
    const onError = (err: Error): void => {
      cleanup();
      reject(err);
    };
    const onClose = (): void => {
      cleanup();
      reject(new ConnectError("client closed the connection", Code.Canceled));
    };
    req.on("data", onData);
    req.once("end", onEnd);
    req.once("error", onError);
    req.once("close", onClose);
  });
}

function parseJsonBody(body: Buffer): JsonValue | undefined {
  const text = body.toString("utf8");
  if (text.trim() === "") return undefined;
  let json: JsonValue;
  try {
    json = JSON.parse(text) as JsonValue;
  } catch (err) {
    throw invalid(`malformed JSON body: ${(err as Error).message}`);
  }
  // Deeper than any valid request: refused here, before it becomes a message too deep to decode.
  if (jsonDepth(json, LIMITS.maxJsonBodyDepth + 1) > LIMITS.maxJsonBodyDepth) {
    throw invalid(`JSON body nests objects and arrays more than ${LIMITS.maxJsonBodyDepth} levels deep`);
  }
  return json;
}

function sendBody(res: HttpResponse, status: number, contentType: string, body: string, head: boolean): void {
  const r = asH1(res);
  r.writeHead(status, { "content-type": contentType, "content-length": Buffer.byteLength(body) });
  r.end(head ? undefined : body);
}

function sendStatus(res: HttpResponse, httpStatus: number, status: StatusJson): void {
  sendBody(res, httpStatus, "application/json", JSON.stringify(status), false);
}
