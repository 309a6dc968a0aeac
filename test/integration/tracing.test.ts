import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { SpanKind } from "@opentelemetry/api";
import { InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from "@opentelemetry/sdk-trace-base";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { TaskStatus } from "../../gen/taskmesh/v1/task_pb.js";
import { createLogger, silentLogger } from "../../lib/logger.js";
import { initTracing, traceMixin, type TracingShutdown } from "../../lib/tracing.js";
import { startGateway, type Gateway } from "../../services/gateway/gateway.js";
import { startScheduler, type Scheduler } from "../../services/scheduler/scheduler.js";
import { startWorker, type Worker } from "../../services/worker/worker.js";
import { gatewayClients, waitTerminal } from "../support/clients.js";
import { uniquePrefix } from "../support/ids.js";
import { waitFor } from "../support/wait.js";

/**
 * Gateway, scheduler and worker in this one process, so one in-memory exporter sees the spans of
 * all three: a task submitted with a client's `traceparent` must be one trace from the client to
 * the handler, and the handler's log lines must carry its trace id.
 */
describe("trace context across the mesh", () => {
  const exporter = new InMemorySpanExporter();
  const workerLines: Record<string, unknown>[] = [];
  const apiKey = `tm_${randomBytes(12).toString("hex")}`;
  let stopTracing: TracingShutdown | undefined;
  let scheduler: Scheduler | undefined;
  let worker: Worker | undefined;
  let gateway: Gateway | undefined;
  let filesRoot = "";

  beforeAll(async () => {
    stopTracing = initTracing("taskmesh-test", { spanProcessors: [new SimpleSpanProcessor(exporter)] });
    const prefix = uniquePrefix("tracing");
    const etcdRoot = `/${prefix}/`;
    const etcdEndpoints = [inject("etcdEndpoint")];
    const redisUrl = inject("redisUrl");
    filesRoot = await mkdtemp(join(tmpdir(), "taskmesh-tracing-"));
    const destination = new Writable({
      write(chunk: Buffer, _enc, done) {
        for (const l of chunk.toString().split("\n")) if (l !== "") workerLines.push(JSON.parse(l) as Record<string, unknown>);
        done();
      },
    });
    scheduler = await startScheduler({
      host: "127.0.0.1",
      port: 0,
      etcdEndpoints,
      etcdRoot,
      redisUrl,
      redisPrefix: prefix,
      taskLeaseMs: 10_000,
      agingMsPerLevel: 5000,
      electionTtlSeconds: 2,
      labels: {},
      configCache: "",
      advertiseAddress: "",
      version: "test",
      logger: silentLogger(),
    });
    worker = await startWorker({
      id: `${prefix}-w1`,
      host: "127.0.0.1",
      port: 0,
      slots: 4,
      etcdEndpoints,
      etcdRoot,
      handlersPath: "",
      filesRoot,
      httpAllowedHosts: [],
      queues: [],
      labels: {},
      shutdownGraceMs: 1000,
      leaseTtlSeconds: 5,
      heartbeatMs: 500,
      configCache: "",
      advertiseAddress: "",
      version: "test",
      logger: createLogger("worker", { level: "debug", destination, mixin: traceMixin }),
    });
    gateway = await startGateway({
      host: "127.0.0.1",
      port: 0,
      etcdEndpoints,
      etcdRoot,
      redisUrl,
      redisPrefix: prefix,
      bootstrapApiKey: apiKey,
      rateLimits: { ratePerSecond: 0, burst: 100 },
      maxRequestBytes: 1024 * 1024,
      corsOrigins: [],
      labels: {},
      configCache: "",
      advertiseAddress: "",
      version: "test",
      logger: silentLogger(),
    });
  });

  afterAll(async () => {
    await gateway?.close();
    await worker?.close();
    await scheduler?.close();
    await stopTracing?.();
    if (filesRoot !== "") await rm(filesRoot, { recursive: true, force: true });
  });

  const finished = (name: string, traceId: string): ReadableSpan[] =>
    exporter.getFinishedSpans().filter((s) => s.name === name && s.spanContext().traceId === traceId);

  it("carries one trace from the client through gateway and scheduler into the task's handler and its logs", async () => {
    const traceId = randomBytes(16).toString("hex");
    const clientSpanId = randomBytes(8).toString("hex");
    const c = gatewayClients(gateway?.address ?? "", apiKey);
    // The scheduler takes submissions once a worker that knows the type is registered and led.
    const task = await waitFor(
      () =>
        c.tasks.submitTask(
          { type: "data_processing", payload: { data: [{ n: 1 }, { n: 2 }] } },
          { headers: { traceparent: `00-${traceId}-${clientSpanId}-01` } },
        ),
      { what: "a submitted task" },
    );
    const [done] = await waitTerminal(c.tasks, [task.id], 20_000);
    expect(done?.status).toBe(TaskStatus.SUCCEEDED);

    const gatewaySpan = await waitFor(() => finished("taskmesh.v1.TaskService/SubmitTask", traceId)[0], { what: "gateway span" });
    const schedulerSpan = await waitFor(() => finished("taskmesh.v1.SchedulerService/SubmitTask", traceId)[0], {
      what: "scheduler span",
    });
    const taskSpan = await waitFor(() => finished("task data_processing", traceId)[0], { what: "task span" });

    expect(gatewaySpan.kind).toBe(SpanKind.SERVER);
    expect(gatewaySpan.parentSpanContext?.spanId).toBe(clientSpanId);
    expect(schedulerSpan.kind).toBe(SpanKind.SERVER);
    expect(schedulerSpan.parentSpanContext?.spanId).toBe(gatewaySpan.spanContext().spanId);
    expect(taskSpan.kind).toBe(SpanKind.CONSUMER);
    expect(taskSpan.parentSpanContext?.spanId).toBe(schedulerSpan.spanContext().spanId);
    expect(taskSpan.attributes).toMatchObject({
      "taskmesh.task.id": task.id,
      "taskmesh.task.attempt": 1,
      "taskmesh.task.type": "data_processing",
      "taskmesh.task.outcome": "succeeded",
    });

    // The handler's progress reports are logged from inside it: they carry the task's trace.
    const handlerLines = workerLines.filter((l) => l["msg"] === "task progress" && l["taskId"] === task.id);
    expect(handlerLines.length).toBeGreaterThan(0);
    for (const l of handlerLines) {
      expect(l["trace_id"]).toBe(traceId);
      expect(l["span_id"]).toBe(taskSpan.spanContext().spanId);
    }
  });
});
