/**
 * A lean server path for unary gRPC calls (`application/grpc`, binary protobuf), beside
 * connect-node on the same HTTP/2 server.
 *
 * connect-node handles every protocol (Connect, gRPC-Web, JSON, streams) through a general
 * pipeline of async iterables, linked abort signals and header conversions. For the calls on the
 * hot path (SubmitTask, GetTask… between client, gateway and scheduler) that costs about ten times
 * the CPU of the HTTP/2 work itself (bench: ≈330 µs against ≈30 µs per call on this machine). This
 * module serves those calls straight from the HTTP/2 stream: collect one length-prefixed message,
 * run the handler, answer with one message and the `grpc-status` trailer — or a trailers-only
 * error with `grpc-status`, `grpc-message` and `grpc-status-details-bin` exactly as connect writes
 * them. Everything else (other protocols, streams, compressed requests) goes to connect-node.
 */
import type * as http2 from "node:http2";
import { constants as h2constants } from "node:http2";
import { create, fromBinary, toBinary, type DescMethodUnary, type DescService } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createContextKey,
  createContextValues,
  type HandlerContext,
  type ServiceImpl,
} from "@connectrpc/connect";
import { parseTimeout, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import type { MeshPeer } from "./mesh-identity.js";
import { MESH_PEER } from "./mesh-security.js";

/** True in the HandlerContext of a call served by the fast path (for logs and tests). */
export const FAST_PATH = createContextKey(false, { description: "served by the fast gRPC path" });

/** One unary call as the fast path hands it to a handler. */
export interface FastCall {
  /** `/package.Service/Method` */
  readonly path: string;
  /** The request message, without the gRPC length prefix. */
  readonly message: Uint8Array;
  /** The request headers as Node's HTTP/2 server parsed them (lower-case names). */
  readonly headers: http2.IncomingHttpHeaders;
  /** Aborts when the client goes away, the deadline passes or the server shuts down. */
  readonly signal: AbortSignal;
  /** Milliseconds left until the client's `grpc-timeout`, read when asked; undefined without one. */
  timeoutMs(): number | undefined;
  /** The authenticated caller, on an internal port of the mesh (lib/mesh-security.ts). */
  readonly peer?: MeshPeer | undefined;
}

/** Answers one call with the response message (unframed), or throws (a ConnectError keeps its code). */
export type FastHandler = (call: FastCall) => Promise<Uint8Array>;

/** Fast handlers by path (`/package.Service/Method`). */
export type FastRoutes = Map<string, FastHandler>;

/** A gRPC request header value as one string (Node gives arrays for repeated headers). */
export function headerValue(headers: http2.IncomingHttpHeaders, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v.join(", ") : v;
}

/** True for a request the fast path can take: gRPC with binary protobuf and no compression. */
export function isPlainGrpc(headers: http2.IncomingHttpHeaders): boolean {
  if (headers[":method"] !== "POST") return false;
  const type = headers["content-type"];
  if (type !== "application/grpc" && type !== "application/grpc+proto") return false;
  const encoding = headers["grpc-encoding"];
  return encoding === undefined || encoding === "identity";
}

/** `message` behind the 5-byte gRPC prefix (uncompressed). */
export function frame(message: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(5 + message.length);
  out[0] = 0;
  out.writeUInt32BE(message.length, 1);
  out.set(message, 5);
  return out;
}

/**
 * The one message of a unary request or response body, or a ConnectError: the body must hold
 * exactly one uncompressed length-prefixed message.
 */
export function unframe(body: Buffer, what: string): Uint8Array | ConnectError {
  if (body.length < 5) return new ConnectError(`${what}: expected one message, got ${body.length} bytes`, Code.InvalidArgument);
  if (body[0] !== 0) return new ConnectError(`${what}: compressed or unknown message flags ${body[0]} (no compression is accepted)`, Code.InvalidArgument);
  const length = body.readUInt32BE(1);
  if (5 + length !== body.length) {
    return new ConnectError(`${what}: expected exactly one message of ${length} bytes in ${body.length}`, Code.InvalidArgument);
  }
  return body.subarray(5);
}

/** Headers (web) → plain object for Node's HTTP/2 API. */
function toNodeHeaders(h: Headers, into: http2.OutgoingHttpHeaders): http2.OutgoingHttpHeaders {
  h.forEach((value, key) => {
    into[key] = value;
  });
  return into;
}

/** The gRPC status headers for an error (trailers-only response, or trailers). */
export function errorHeaders(err: ConnectError): http2.OutgoingHttpHeaders {
  return toNodeHeaders(setTrailerStatus(new Headers(), err), {});
}

/** How the server observes fast calls (metrics and logs, like its connect interceptors). */
export interface FastObserver {
  /** Called when a call starts; the returned function when it ends, with its final code. */
  start(path: string): (code: Code | 0, err?: ConnectError) => void;
}

/** What {@link serveFast} needs from its server. */
export interface FastServeOptions {
  /** Largest request body accepted (bytes, prefix included); more is RESOURCE_EXHAUSTED. */
  maxRequestBytes: number;
  observer: FastObserver;
  /** Calls in progress, so the server can abort them when it closes. */
  inflight: Set<LazyAbort>;
}

/**
 * An AbortController made only when someone asks for its signal: most calls end without anyone
 * listening, and a controller plus signal per call showed in the profile.
 */
export class LazyAbort {
  private controller: AbortController | undefined;
  private reason: unknown;
  private aborted = false;

  get signal(): AbortSignal {
    if (this.controller === undefined) {
      this.controller = new AbortController();
      if (this.aborted) this.controller.abort(this.reason);
    }
    return this.controller.signal;
  }

  abort(reason: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    this.controller?.abort(reason);
  }
}

const RESPONSE_HEADERS = { ":status": 200, "content-type": "application/grpc+proto" } as const;

/**
 * Serves one unary gRPC call on `stream` with `handler`. The handler's signal aborts when the
 * client resets the stream, when the call's deadline passes (the call then ends with
 * DEADLINE_EXCEEDED at once) or when the server aborts every call in `inflight` (the call then
 * still ends with whatever the handler returns or throws).
 */
export function serveFast(
  stream: http2.ServerHttp2Stream,
  headers: http2.IncomingHttpHeaders,
  handler: FastHandler,
  opts: FastServeOptions,
  peer?: MeshPeer,
): void {
  const path = headers[":path"] ?? "";
  const done = opts.observer.start(path);
  const abort = new LazyAbort();
  opts.inflight.add(abort);
  let timer: NodeJS.Timeout | undefined;
  let deadline: number | undefined;
  let answered = false;

  const finish = (code: Code | 0, err?: ConnectError): void => {
    if (answered) return;
    answered = true;
    opts.inflight.delete(abort);
    if (timer !== undefined) clearTimeout(timer);
    done(code, err);
  };
  const fail = (err: ConnectError): void => {
    if (answered) return;
    finish(err.code, err);
    if (stream.destroyed || stream.closed) return;
    if (stream.headersSent) {
      // Cannot happen for unary calls (headers go with the one message), but never leave a stream open.
      stream.close(h2constants.NGHTTP2_INTERNAL_ERROR);
      return;
    }
    stream.respond({ ...RESPONSE_HEADERS, ...errorHeaders(err) }, { endStream: true });
  };
  const succeed = (message: Uint8Array): void => {
    if (answered) return;
    finish(0);
    if (stream.destroyed || stream.closed) return;
    stream.respond(RESPONSE_HEADERS, { waitForTrailers: true });
    stream.once("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
    stream.end(frame(message));
  };

  // The client went away (RST_STREAM, connection lost) before we answered: the handler stops.
  stream.once("close", () => {
    if (answered) return;
    abort.abort(new ConnectError("the client cancelled the call", Code.Canceled));
    finish(Code.Canceled);
  });
  stream.on("error", () => undefined); // reported through "close"
  // When the server shuts down it aborts `abort` only: the handler sees its signal and ends the
  // call itself, so the client learns the real outcome (a write may already have happened).

  const timeout = parseTimeout(headerValue(headers, "grpc-timeout") ?? null, Number.MAX_SAFE_INTEGER);
  if (timeout.error !== undefined) {
    fail(timeout.error);
    return;
  }
  // Longer than a timer can wait (≈ 24.8 days) is as good as none.
  if (timeout.timeoutMs !== undefined && timeout.timeoutMs <= 2_147_483_647) {
    deadline = performance.now() + timeout.timeoutMs;
    timer = setTimeout(() => {
      // The client stops waiting at its deadline too: answer now, and stop the handler.
      const err = new ConnectError("the call's deadline passed", Code.DeadlineExceeded);
      fail(err);
      abort.abort(err);
    }, timeout.timeoutMs);
  }

  const chunks: Buffer[] = [];
  let size = 0;
  stream.on("data", (chunk: Buffer) => {
    size += chunk.length;
    if (size > opts.maxRequestBytes) {
      if (!answered) fail(new ConnectError(`request larger than ${opts.maxRequestBytes} bytes`, Code.ResourceExhausted));
      stream.pause();
      return;
    }
    chunks.push(chunk);
  });
  stream.once("end", () => {
    if (answered) return;
    const body = chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, size);
    const message = unframe(body, "request");
    if (message instanceof ConnectError) {
      fail(message);
      return;
    }
    const call: FastCall = {
      path,
      message,
      headers,
      get signal() {
        return abort.signal;
      },
      timeoutMs: () => (deadline === undefined ? undefined : Math.max(0, deadline - performance.now())),
      peer,
    };
    let result: Promise<Uint8Array>;
    try {
      result = handler(call);
    } catch (err) {
      fail(asStatus(err));
      return;
    }
    result.then(succeed, (err: unknown) => fail(asStatus(err)));
  });
}

/**
 * What a handler threw, as the status to send: a ConnectError as it is; anything else is
 * INTERNAL with a generic message (its own message may hold internals), kept as the cause so the
 * server's log shows it.
 */
function asStatus(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  return new ConnectError("internal error", Code.Internal, undefined, undefined, err);
}

/** Node's HTTP/2 headers (request, response or trailers) as web Headers, without pseudo-headers. */
export function webHeaders(headers: http2.IncomingHttpHeaders): Headers {
  const h = new Headers();
  for (const key in headers) {
    if (key.charCodeAt(0) === 58 /* ':' */) continue;
    const v = headers[key];
    if (v === undefined) continue;
    if (Array.isArray(v)) for (const x of v) h.append(key, x);
    else h.append(key, String(v));
  }
  return h;
}

/**
 * Fast handlers for every unary method of `service`, running the same implementation connect
 * serves: decode, call with a HandlerContext (request headers, signal, deadline), encode. Errors
 * keep their code; anything else becomes INTERNAL, as connect does. Handlers that set response
 * headers or trailers are not supported here (none of ours do): they are ignored.
 */
export function implRoutes(service: DescService, impl: Partial<ServiceImpl<DescService>>, into: FastRoutes): void {
  for (const method of service.methods) {
    if (method.methodKind !== "unary") continue;
    const fn = (impl as Record<string, unknown>)[method.localName];
    if (typeof fn !== "function") continue;
    const unary = method as DescMethodUnary;
    const url = `/${service.typeName}/${method.name}`;
    into.set(url, async (call) => {
      let request;
      try {
        request = fromBinary(unary.input, call.message);
      } catch (err) {
        // Bytes that are no valid message are the client's error, not ours.
        throw new ConnectError(`request: not a valid ${unary.input.typeName}: ${err instanceof Error ? err.message : String(err)}`, Code.InvalidArgument);
      }
      let requestHeader: Headers | undefined;
      const ctx: HandlerContext = {
        method,
        service,
        get signal() {
          return call.signal;
        },
        timeoutMs: call.timeoutMs,
        requestMethod: "POST",
        get requestHeader() {
          requestHeader ??= webHeaders(call.headers);
          return requestHeader;
        },
        responseHeader: new Headers(),
        responseTrailer: new Headers(),
        protocolName: "grpc",
        values: createContextValues().set(FAST_PATH, true).set(MESH_PEER, call.peer),
        url,
      };
      const out = await (fn as (req: unknown, ctx: HandlerContext) => unknown).call(impl, request, ctx);
      return toBinary(unary.output, create(unary.output, out as never));
    });
  }
}
