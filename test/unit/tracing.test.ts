import { randomBytes } from "node:crypto";
import { Writable } from "node:stream";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { SpanKind, SpanStatusCode } from "@opentelemetry/api";
import { InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from "@opentelemetry/sdk-trace-base";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus, HealthCheckResponseSchema } from "../../gen/grpc/health/v1/health_pb.js";
import { createLogger } from "../../lib/logger.js";
import {
  currentTraceparent,
  initTracing,
  isTraceparent,
  traceMixin,
  tracingInterceptor,
  withSpan,
  type TracingShutdown,
} from "../../lib/tracing.js";
import { waitFor } from "../support/wait.js";

const exporter = new InMemorySpanExporter();
let stopTracing: TracingShutdown;

/** A client's trace context: random ids, sampled. */
function clientContext(): { traceId: string; spanId: string; traceparent: string } {
  const traceId = randomBytes(16).toString("hex");
  const spanId = randomBytes(8).toString("hex");
  return { traceId, spanId, traceparent: `00-${traceId}-${spanId}-01` };
}

function spansNamed(name: string): ReadableSpan[] {
  return exporter.getFinishedSpans().filter((s) => s.name === name);
}

/** A pino destination that keeps the parsed lines. */
function lineSink(): { stream: Writable; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString().split("\n")) if (l !== "") lines.push(JSON.parse(l) as Record<string, unknown>);
      done();
    },
  });
  return { stream, lines };
}

beforeAll(() => {
  stopTracing = initTracing("taskmesh-unit", { spanProcessors: [new SimpleSpanProcessor(exporter)] });
});

afterAll(async () => {
  await stopTracing();
});

beforeEach(() => exporter.reset());

describe("tracing helpers", () => {
  it("refuses a second initialisation while tracing is on", () => {
    expect(() => initTracing("again")).toThrow(/already initialised/);
  });

  it("has no trace context and adds no log fields outside a span", () => {
    expect(currentTraceparent()).toBeUndefined();
    expect(traceMixin()).toEqual({});
  });

  it("continues the given trace in withSpan and exposes it as traceparent and log fields", async () => {
    const client = clientContext();
    const seen = await withSpan("work", client.traceparent, async (span) => {
      await Promise.resolve();
      return { tp: currentTraceparent(), fields: traceMixin(), spanId: span.spanContext().spanId };
    });
    const [span] = spansNamed("work");
    expect(span?.spanContext().traceId).toBe(client.traceId);
    expect(span?.parentSpanContext?.spanId).toBe(client.spanId);
    expect(span?.kind).toBe(SpanKind.INTERNAL);
    expect(seen.tp).toBe(`00-${client.traceId}-${seen.spanId}-01`);
    expect(isTraceparent(seen.tp ?? "")).toBe(true);
    expect(seen.fields).toEqual({ trace_id: client.traceId, span_id: seen.spanId });
    expect(currentTraceparent()).toBeUndefined();
  });

  it("starts a new trace in withSpan without a parent, even inside another span", async () => {
    const outer = clientContext();
    await withSpan("outer", outer.traceparent, () => withSpan("inner", undefined, async () => undefined));
    const [inner] = spansNamed("inner");
    expect(inner?.spanContext().traceId).not.toBe(outer.traceId);
    expect(inner?.parentSpanContext).toBeUndefined();
  });

  it("ignores a malformed parent and records a rejection as an error", async () => {
    await expect(
      withSpan("broken", "not-a-traceparent", () => Promise.reject(new Error("boom")), { kind: SpanKind.CONSUMER }),
    ).rejects.toThrow("boom");
    const [span] = spansNamed("broken");
    expect(span?.parentSpanContext).toBeUndefined();
    expect(span?.kind).toBe(SpanKind.CONSUMER);
    expect(span?.status).toEqual({ code: SpanStatusCode.ERROR, message: "boom" });
    expect(span?.events.map((e) => e.name)).toContain("exception");
    expect(isTraceparent("not-a-traceparent")).toBe(false);
  });

  it("puts trace_id and span_id on log lines written inside a span, and only there", async () => {
    const sink = lineSink();
    const log = createLogger("unit", { destination: sink.stream, mixin: traceMixin }).child({ component: "c" });
    const client = clientContext();
    log.info("outside");
    const spanId = await withSpan("logged", client.traceparent, async (span) => {
      log.info({ n: 1 }, "inside");
      return span.spanContext().spanId;
    });
    expect(sink.lines.map((l) => [l["msg"], l["trace_id"], l["span_id"]])).toEqual([
      ["outside", undefined, undefined],
      ["inside", client.traceId, spanId],
    ]);
    expect(sink.lines[1]).toMatchObject({ service: "unit", component: "c", n: 1 });
  });

  it("keeps createLogger working without a mixin", () => {
    const sink = lineSink();
    createLogger("plain", { destination: sink.stream }).info("hello");
    expect(sink.lines[0]).toMatchObject({ service: "plain", msg: "hello" });
    expect(sink.lines[0]).not.toHaveProperty("trace_id");
  });
});

describe("tracingInterceptor", () => {
  const seen: (string | undefined)[] = [];
  const transport = createRouterTransport(
    (router) =>
      router.service(Health, {
        check(req) {
          seen.push(currentTraceparent());
          if (req.service === "missing") throw new ConnectError("unknown service", Code.NotFound);
          if (req.service === "crash") throw new Error("internal detail");
          return create(HealthCheckResponseSchema, { status: HealthCheckResponse_ServingStatus.SERVING });
        },
        async *watch() {
          seen.push(currentTraceparent());
          yield create(HealthCheckResponseSchema, { status: HealthCheckResponse_ServingStatus.SERVING });
          await Promise.resolve();
          seen.push(currentTraceparent());
          yield create(HealthCheckResponseSchema, { status: HealthCheckResponse_ServingStatus.NOT_SERVING });
        },
      }),
    { router: { interceptors: [tracingInterceptor()] } },
  );
  const client = createClient(Health, transport);

  beforeEach(() => {
    seen.length = 0;
  });

  it("continues the caller's traceparent in a SERVER span the handler sees, ended with code OK", async () => {
    const caller = clientContext();
    await client.check({ service: "" }, { headers: { traceparent: caller.traceparent } });
    const [span] = spansNamed("grpc.health.v1.Health/Check");
    expect(span?.kind).toBe(SpanKind.SERVER);
    expect(span?.spanContext().traceId).toBe(caller.traceId);
    expect(span?.parentSpanContext?.spanId).toBe(caller.spanId);
    expect(span?.attributes).toMatchObject({ "rpc.service": "grpc.health.v1.Health", "rpc.method": "Check", "rpc.grpc.status_code": 0 });
    expect(seen).toEqual([`00-${caller.traceId}-${span?.spanContext().spanId}-01`]);
  });

  it("starts a new trace when the caller sends none", async () => {
    await client.check({ service: "" });
    const [span] = spansNamed("grpc.health.v1.Health/Check");
    expect(span?.parentSpanContext).toBeUndefined();
    expect(seen[0]).toBe(`00-${span?.spanContext().traceId}-${span?.spanContext().spanId}-01`);
  });

  it("records the status code, marking server faults as errors but not client errors", async () => {
    await expect(client.check({ service: "missing" })).rejects.toThrow(/unknown service/);
    await expect(client.check({ service: "crash" })).rejects.toThrow();
    const [missing, crash] = spansNamed("grpc.health.v1.Health/Check");
    expect(missing?.attributes["rpc.grpc.status_code"]).toBe(Code.NotFound);
    expect(missing?.status.code).toBe(SpanStatusCode.UNSET);
    expect(crash?.attributes["rpc.grpc.status_code"]).toBe(Code.Unknown);
    expect(crash?.status.code).toBe(SpanStatusCode.ERROR);
  });

  it("keeps a server stream's handler inside the span and ends the span when the stream ends", async () => {
    const caller = clientContext();
    const got = [];
    for await (const m of client.watch({ service: "" }, { headers: { traceparent: caller.traceparent } })) got.push(m.status);
    expect(got).toHaveLength(2);
    const [span] = spansNamed("grpc.health.v1.Health/Watch");
    expect(span?.spanContext().traceId).toBe(caller.traceId);
    const expected = `00-${caller.traceId}-${span?.spanContext().spanId}-01`;
    expect(seen).toEqual([expected, expected]);
    expect(span?.attributes["rpc.grpc.status_code"]).toBe(0);
  });

  it("ends a server stream's span when the client cancels the call", async () => {
    const abort = new AbortController();
    const it = client.watch({ service: "" }, { signal: abort.signal })[Symbol.asyncIterator]();
    expect((await it.next()).value?.status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    abort.abort();
    // The server learns of the cancel asynchronously.
    const span = await waitFor(() => spansNamed("grpc.health.v1.Health/Watch")[0], { what: "the stream's span" });
    expect(span.attributes["rpc.grpc.status_code"]).toBe(Code.Canceled);
  });
});
