import type { Interceptor, StreamResponse } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  context,
  diag,
  DiagLogLevel,
  isSpanContextValid,
  propagation,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  type Attributes,
  type Context,
  type DiagLogger,
  type Span,
  type TextMapGetter,
} from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { resourceFromAttributes } from "@opentelemetry/resources";
import {
  AlwaysOnSampler,
  BasicTracerProvider,
  BatchSpanProcessor,
  ParentBasedSampler,
  type SpanProcessor,
} from "@opentelemetry/sdk-trace-base";
import { ATTR_SERVICE_NAME, ATTR_SERVICE_VERSION } from "@opentelemetry/semantic-conventions";
import type { Logger } from "pino";
import { VERSION } from "./version.js";

/**
 * Distributed tracing with the OpenTelemetry API: W3C trace context (`traceparent`, `tracestate`)
 * carried gateway → scheduler → worker → the task's handler, spans exported over OTLP/HTTP when
 * an endpoint is configured, and trace ids in every log line ({@link traceMixin}).
 *
 * Everything here goes through the global OpenTelemetry API, so it is a cheap no-op until
 * {@link initTracing} installs a tracer provider and context manager: components and tests that
 * never call it behave as before.
 */

/** The instrumentation scope of taskmesh's own spans. */
const TRACER_NAME = "taskmesh";

/** Used directly (not through the global API) so parsing works whether or not tracing is set up. */
const w3c = new W3CTraceContextPropagator();

/** `traceparent` as the W3C Trace Context spec defines version 00 (lower-case hex). */
const TRACEPARENT = /^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/;

/** Codes that are the server's fault: their spans get status ERROR (OpenTelemetry's gRPC server rule). */
const SERVER_ERROR_CODES: ReadonlySet<Code> = new Set([
  Code.Unknown,
  Code.DeadlineExceeded,
  Code.Unimplemented,
  Code.Internal,
  Code.Unavailable,
  Code.DataLoss,
]);

/** Options of {@link initTracing}; main.ts derives them from env and flags. */
export interface TracingOptions {
  /**
   * Base URL of an OTLP/HTTP collector (the standard `OTEL_EXPORTER_OTLP_ENDPOINT`, e.g.
   * `http://127.0.0.1:4318`): spans are batched and sent to `<url>/v1/traces`. Absent or empty
   * (and no `spanProcessors`, and not `always`): tracing stays off — the API's no-op — because
   * its context tracking costs every request; incoming trace context is still passed on.
   */
  otlpEndpoint?: string | undefined;
  /** Make spans (and trace ids in logs) even with nowhere to send them. @default false */
  always?: boolean | undefined;
  /** `service.version` of the resource. @default VERSION */
  version?: string | undefined;
  /** More span processors, e.g. a `SimpleSpanProcessor` over an `InMemorySpanExporter` in tests. */
  spanProcessors?: SpanProcessor[] | undefined;
  /** Receives the OpenTelemetry SDK's own warnings and errors (failed exports...); dropped without. */
  logger?: Logger | undefined;
}

/**
 * True once {@link initTracing} set up a tracer that exports spans. Servers then run every call
 * through their connect interceptors (which open the spans) instead of the fast gRPC path.
 */
export function tracingEnabled(): boolean {
  return active;
}

/** Stops tracing: flushes and shuts down the exporter, then restores the no-op API. Idempotent. */
export type TracingShutdown = () => Promise<void>;

let active = false;

/**
 * Sets up tracing for the process, once: a tracer provider for `service` (every span sampled,
 * or as the incoming trace context says), an AsyncLocalStorage context manager so the active
 * span follows async calls, the W3C trace context propagator, and an OTLP/HTTP exporter when
 * `otlpEndpoint` is given. Returns the shutdown to add to the service's Shutdown (last, so the
 * spans of the shutdown itself are exported). Throws if tracing is already set up.
 */
export function initTracing(service: string, opts: TracingOptions = {}): TracingShutdown {
  if (active) throw new Error("tracing is already initialised in this process");
  const processors: SpanProcessor[] = [];
  const endpoint = opts.otlpEndpoint ?? "";
  if (endpoint !== "") {
    let url: string;
    try {
      url = new URL("v1/traces", endpoint.endsWith("/") ? endpoint : `${endpoint}/`).toString();
    } catch {
      throw new Error(`OTLP endpoint is not a URL: ${JSON.stringify(endpoint)}`);
    }
    processors.push(new BatchSpanProcessor(new OTLPTraceExporter({ url })));
  }
  processors.push(...(opts.spanProcessors ?? []));
  if (processors.length === 0 && opts.always !== true) {
    // Nobody would receive the spans: stay on the OpenTelemetry API's no-op implementation. The
    // context manager (AsyncLocalStorage over async hooks on Node 20) taxes every promise of the
    // hot path, so tracing costs nothing unless it is wanted.
    return async () => undefined;
  }
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ [ATTR_SERVICE_NAME]: service, [ATTR_SERVICE_VERSION]: opts.version ?? VERSION }),
    sampler: new ParentBasedSampler({ root: new AlwaysOnSampler() }),
    spanProcessors: processors,
  });
  const contextManager = new AsyncLocalStorageContextManager().enable();
  if (opts.logger !== undefined) diag.setLogger(diagLogger(opts.logger), DiagLogLevel.WARN);
  context.setGlobalContextManager(contextManager);
  propagation.setGlobalPropagator(w3c);
  trace.setGlobalTracerProvider(provider);
  active = true;

  let stopping: Promise<void> | undefined;
  return () => {
    stopping ??= (async () => {
      try {
        await provider.shutdown();
      } finally {
        trace.disable();
        propagation.disable();
        context.disable();
        diag.disable();
        active = false;
      }
    })();
    return stopping;
  };
}

/** Routes the SDK's diagnostics to pino: constant message, the SDK's text in a field. */
function diagLogger(logger: Logger): DiagLogger {
  const log = logger.child({ component: "opentelemetry" });
  const to =
    (level: "error" | "warn" | "info" | "debug" | "trace") =>
    (message: string, ...args: unknown[]): void =>
      log[level]({ detail: message, args: args.length > 0 ? args : undefined }, "opentelemetry diagnostic");
  return { error: to("error"), warn: to("warn"), info: to("info"), debug: to("debug"), verbose: to("trace") };
}

const headerGetter: TextMapGetter<Headers> = {
  get: (carrier, key) => carrier.get(key) ?? undefined,
  keys: (carrier) => [...carrier.keys()],
};

const recordGetter: TextMapGetter<Record<string, string>> = {
  get: (carrier, key) => carrier[key],
  keys: (carrier) => Object.keys(carrier),
};

/** The taskmesh tracer (looked up per use: a cached proxy would outlive a re-initialised provider). */
function tracer() {
  return trace.getTracer(TRACER_NAME, VERSION);
}

/** Ends a span with the RPC's outcome: the gRPC code as an attribute, ERROR for server faults. */
function endRpcSpan(span: Span, err: unknown): void {
  // 0 is gRPC's OK, which connect's Code enum leaves out.
  const code: Code | 0 = err === undefined ? 0 : ConnectError.from(err).code;
  span.setAttribute("rpc.grpc.status_code", code);
  if (code !== 0 && SERVER_ERROR_CODES.has(code)) {
    span.setStatus({ code: SpanStatusCode.ERROR, message: Code[code] });
  }
  span.end();
}

/**
 * A connect interceptor for servers, to run first (outermost): it continues the caller's trace
 * from the `traceparent` / `tracestate` request headers (or starts one), opens a SERVER span named
 * `<service>/<Method>`, runs the rest of the call (interceptors, handler) inside it, so logs and
 * {@link currentTraceparent} see it, and ends it with the status code when a unary call returns
 * or a response stream ends (also when the client goes away).
 */
export function tracingInterceptor(): Interceptor {
  return (next) => async (req) => {
    const service = req.method.parent.typeName;
    const method = req.method.name;
    // A server continues only what the caller sent, never whatever context happens to be active.
    const parent = w3c.extract(ROOT_CONTEXT, req.header, headerGetter);
    const span = tracer().startSpan(
      `${service}/${method}`,
      { kind: SpanKind.SERVER, attributes: { "rpc.system": "grpc", "rpc.service": service, "rpc.method": method } },
      parent,
    );
    const ctx = trace.setSpan(parent, span);
    let res;
    try {
      res = await context.with(ctx, () => next(req));
    } catch (err) {
      endRpcSpan(span, err);
      throw err;
    }
    if (!res.stream) {
      endRpcSpan(span, undefined);
      return res;
    }
    return { ...res, message: tracedStream(res, ctx, span, req.signal) };
  };
}

/**
 * The response stream, each step run inside the call's context (a generator's body runs in the
 * context of whoever pulls it, here the server adapter, which is outside the span). The span ends
 * when the stream ends, fails, is closed early, or, as a backstop for a consumer that just drops
 * it, when the call's signal aborts.
 */
function tracedStream<O>(res: StreamResponse, ctx: Context, span: Span, signal: AbortSignal): AsyncIterable<O> {
  const messages = res.message as AsyncIterable<O>;
  let ended = false;
  const end = (err: unknown): void => {
    if (ended) return;
    ended = true;
    signal.removeEventListener("abort", onAbort);
    endRpcSpan(span, err);
  };
  const onAbort = (): void => end(ConnectError.from(signal.reason, Code.Canceled));
  signal.addEventListener("abort", onAbort, { once: true });
  return {
    [Symbol.asyncIterator](): AsyncIterator<O> {
      const it = context.with(ctx, () => messages[Symbol.asyncIterator]());
      const step = async (pull: () => Promise<IteratorResult<O>>): Promise<IteratorResult<O>> => {
        try {
          const r = await context.with(ctx, pull);
          if (r.done === true) end(undefined);
          return r;
        } catch (err) {
          end(err);
          throw err;
        }
      };
      return {
        next: () => step(() => it.next()),
        return: (value?: unknown) => {
          if (it.return === undefined) {
            end(new ConnectError("stream closed early", Code.Canceled));
            return Promise.resolve({ done: true, value: value as O });
          }
          const close = it.return.bind(it);
          return step(() => close(value)).finally(() => end(new ConnectError("stream closed early", Code.Canceled)));
        },
        throw: (e?: unknown) => {
          const raise = it.throw?.bind(it);
          if (raise === undefined) {
            end(e);
            return Promise.reject(e instanceof Error ? e : new Error(String(e)));
          }
          return step(() => raise(e));
        },
      };
    },
  };
}

/**
 * The W3C `traceparent` header value of the active span (`00-<trace id>-<span id>-<flags>`), to
 * send along with an outgoing call or store with a task; undefined when no span is active.
 */
export function currentTraceparent(): string | undefined {
  const sc = trace.getSpanContext(context.active());
  if (sc === undefined || !isSpanContextValid(sc)) return undefined;
  return `00-${sc.traceId}-${sc.spanId}-${(sc.traceFlags & 0xff).toString(16).padStart(2, "0")}`;
}

/** True for a well-formed W3C `traceparent` value (version 00 layout, lower-case hex). */
export function isTraceparent(value: string): boolean {
  return TRACEPARENT.test(value);
}

/** Options of {@link withSpan}. */
export interface WithSpanOptions {
  /** @default SpanKind.INTERNAL */
  kind?: SpanKind;
  attributes?: Attributes;
}

/**
 * Runs `fn` inside a new span for work that is not an RPC (the worker running a task): a child
 * of `parentTraceparent` when one is given (and well-formed), else the root of a new trace —
 * never a child of whatever span happens to be active (a task must not join the long-lived
 * stream that delivered it). The span ends when `fn`'s promise settles; a rejection is recorded
 * as an exception with status ERROR. `fn` may set more on the span it receives.
 */
export async function withSpan<T>(
  name: string,
  parentTraceparent: string | undefined,
  fn: (span: Span) => Promise<T>,
  opts: WithSpanOptions = {},
): Promise<T> {
  const parent =
    parentTraceparent !== undefined && parentTraceparent !== ""
      ? w3c.extract(ROOT_CONTEXT, { traceparent: parentTraceparent }, recordGetter)
      : ROOT_CONTEXT;
  const span = tracer().startSpan(
    name,
    { kind: opts.kind ?? SpanKind.INTERNAL, ...(opts.attributes !== undefined ? { attributes: opts.attributes } : {}) },
    parent,
  );
  try {
    return await context.with(trace.setSpan(parent, span), () => fn(span));
  } catch (err) {
    span.recordException(err instanceof Error ? err : String(err));
    span.setStatus({ code: SpanStatusCode.ERROR, message: err instanceof Error ? err.message : String(err) });
    throw err;
  } finally {
    span.end();
  }
}

/** The log fields {@link traceMixin} adds. */
export interface TraceLogFields {
  trace_id?: string;
  span_id?: string;
}

/**
 * A pino `mixin`: adds `trace_id` and `span_id` of the active span to every log line written
 * while it is active (nothing outside spans), so logs and traces join on the trace id. Pass it
 * as `createLogger(service, { mixin: traceMixin })`.
 */
export function traceMixin(): TraceLogFields {
  const sc = trace.getSpanContext(context.active());
  // A fresh object every time: pino merges the line's own fields into what the mixin returns.
  if (sc === undefined || !isSpanContextValid(sc)) return {};
  return { trace_id: sc.traceId, span_id: sc.spanId };
}
