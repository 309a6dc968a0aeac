import { execFile } from "node:child_process";
import { createServer, type Server } from "node:http";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { TaskService } from "../../gen/taskmesh/v1/task_service_pb.js";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { type Priority, type SubmitTaskRequestSchema, TaskStatus, type TaskEvent } from "../../gen/taskmesh/v1/task_pb.js";
import { gatewayClients, waitTerminal, type GatewayClients } from "../support/clients.js";
import { uniquePrefix } from "../support/ids.js";
import { startMesh, type Mesh } from "../support/mesh.js";

type Req = MessageInitShape<typeof SubmitTaskRequestSchema>;

describe("the mesh end to end", () => {
  let mesh: Mesh;
  let c: GatewayClients;
  let http: Server;
  let httpPort = 0;
  const apiKey = "tm_test_key_1234567890";

  beforeAll(async () => {
    http = createServer((req, res) => {
      res.setHeader("content-type", "text/plain");
      res.end(`hello ${req.method} ${req.url}`);
    });
    await new Promise<void>((r) => http.listen(0, "127.0.0.1", r));
    const a = http.address();
    httpPort = typeof a === "object" && a !== null ? a.port : 0;
    mesh = await startMesh({
      etcdEndpoint: inject("etcdEndpoint"),
      redisUrl: inject("redisUrl"),
      prefix: uniquePrefix("e2e"),
      workers: 2,
      slots: 16,
      apiKey,
      workerArgs: ["--http-allowed-hosts", "127.0.0.1"],
    });
    c = gatewayClients(mesh.gateway.address, apiKey);
  });

  afterAll(async () => {
    await mesh?.close();
    await new Promise((r) => http?.close(r));
  });

  it("runs 1,000 tasks of mixed built-in types to SUCCEEDED with correct results", async () => {
    // The bootstrap key is tenant "default": its files live under <root>/default.
    await mkdir(join(mesh.filesRoot, "default", "in"), { recursive: true });
    await writeFile(join(mesh.filesRoot, "default", "in", "hello.txt"), "hello file");
    const reqs: Req[] = [];
    for (let i = 0; i < 1000; i++) {
      switch (i % 7) {
        case 0:
          reqs.push({ type: "noop" });
          break;
        case 1:
          reqs.push({ type: "data_processing", payload: { data: [{ n: i, s: "x" }, { n: 1.5 }] } });
          break;
        case 2:
          reqs.push({ type: "file_operation", payload: { operation: "write", path: `out/${i}.txt`, content: `task ${i}` } });
          break;
        case 3:
          reqs.push({ type: "file_operation", payload: { operation: "read", path: "in/hello.txt" } });
          break;
        case 4:
          reqs.push({ type: "http_request", payload: { method: "GET", url: `http://127.0.0.1:${httpPort}/t/${i}` } });
          break;
        case 5:
          reqs.push({ type: "health_check", payload: {} });
          break;
        default:
          reqs.push({ type: "sleep", payload: { ms: 5 } });
      }
    }
    const ids: string[] = [];
    // Most in batches, some one at a time: both paths.
    for (let i = 0; i < 900; i += 100) {
      const r = await c.tasks.submitTasks({ tasks: reqs.slice(i, i + 100) });
      expect(r.tasks).toHaveLength(100);
      for (const t of r.tasks) {
        expect(t.status).toBe(TaskStatus.QUEUED);
        ids.push(t.id);
      }
    }
    const singles = await Promise.all(reqs.slice(900).map((r) => c.tasks.submitTask(r)));
    ids.push(...singles.map((t) => t.id));
    expect(new Set(ids).size).toBe(1000);

    const tasks = await waitTerminal(c.tasks, ids, 90_000);
    for (const [i, t] of tasks.entries()) {
      expect(t.status, `${t.type} ${JSON.stringify(t.error)}`).toBe(TaskStatus.SUCCEEDED);
      expect(t.attempt).toBe(1);
      expect(t.workerId).not.toBe("");
      const result = t.result ?? {};
      switch (i % 7) {
        case 0:
          expect(result).toEqual({});
          break;
        case 1:
          expect(result).toEqual({ processed_data: [{ n: i * 2, s: "x" }, { n: 3 }], items_processed: 2 });
          break;
        case 2:
          expect(result).toEqual({ written: Buffer.byteLength(`task ${i}`) });
          break;
        case 3:
          expect(result).toMatchObject({ content: "hello file", size: 10 });
          break;
        case 4:
          expect(result).toMatchObject({ status: 200, body: `hello GET /t/${i}` });
          break;
        case 5:
          expect(result).toMatchObject({ slots: 16 });
          break;
        default:
          expect(t.type).toBe("sleep");
      }
    }
    // Both workers took part.
    expect(new Set(tasks.map((t) => t.workerId)).size).toBe(2);
  });

  it("streams a data_processing task's progress up to 100, then the terminal event; a late watcher gets the whole history", async () => {
    const task = await c.tasks.submitTask({
      type: "data_processing",
      payload: { data: [{ v: 1 }, { v: 2 }, { v: 3 }, { v: 4 }, { v: 5 }], item_delay_ms: 40 },
    });
    const live: TaskEvent[] = [];
    for await (const ev of c.tasks.watchTask({ taskId: task.id })) live.push(ev);
    const progress = live.filter((e) => e.event.case === "progress").map((e) => (e.event.case === "progress" ? e.event.value.progress : -1));
    expect(progress.length).toBeGreaterThanOrEqual(2);
    expect(progress).toEqual([...progress].sort((a, b) => a - b));
    expect(progress.at(-1)).toBe(100);
    const last = live.at(-1);
    expect(last?.event.case).toBe("statusChange");
    expect(last?.task?.status).toBe(TaskStatus.SUCCEEDED);
    expect(last?.task?.result).toEqual({ processed_data: [{ v: 2 }, { v: 4 }, { v: 6 }, { v: 8 }, { v: 10 }], items_processed: 5 });
    const seqs = live.map((e) => Number(e.sequence));
    expect(seqs).toEqual(seqs.map((_, i) => i + 1));
    const statuses = live.flatMap((e) => (e.event.case === "statusChange" ? [e.event.value.to] : []));
    expect(statuses).toEqual([TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.SUCCEEDED]);

    const late: TaskEvent[] = [];
    for await (const ev of c.tasks.watchTask({ taskId: task.id })) late.push(ev);
    expect(late.map((e) => [Number(e.sequence), e.event.case, e.task?.status, e.task?.progress])).toEqual(
      live.map((e) => [Number(e.sequence), e.event.case, e.task?.status, e.task?.progress]),
    );
  });

  it("fails file_operation escapes and private http targets without retrying", async () => {
    const bad = await c.tasks.submitTasks({
      tasks: [
        { type: "file_operation", payload: { operation: "read", path: "../../etc/passwd" }, maxAttempts: 3 },
        { type: "file_operation", payload: { operation: "read", path: "/etc/passwd" }, maxAttempts: 3 },
        { type: "http_request", payload: { method: "GET", url: "http://169.254.169.254/latest/meta-data" }, maxAttempts: 3 },
        { type: "http_request", payload: { method: "GET", url: "http://10.0.0.1/" }, maxAttempts: 3 },
      ],
    });
    const done = await waitTerminal(c.tasks, bad.tasks.map((t) => t.id));
    for (const t of done) {
      expect(t.status).toBe(TaskStatus.FAILED);
      expect(t.attempt).toBe(1);
      expect(t.error?.retryable).toBe(false);
    }
  });

  it("refuses bad input with INVALID_ARGUMENT naming the field, and stores nothing", async () => {
    const before = await c.tasks.listTasks({ pageSize: 1000 });
    const cases: [() => Promise<unknown>, string][] = [
      [() => c.tasks.submitTask({}), "type"],
      [() => c.tasks.submitTask({ type: "no_such_type" }), "type"],
      [() => c.tasks.submitTask({ type: "noop", payload: { blob: "x".repeat(1024 * 1024 + 10) } }), "payload"],
      [() => c.tasks.submitTasks({ tasks: Array.from({ length: 1001 }, () => ({ type: "noop" })) }), "tasks"],
      [() => c.tasks.submitTasks({ tasks: [{ type: "noop" }, { type: "nope" }] }), "tasks[1].type"],
      [() => c.tasks.submitTask({ type: "noop", priority: 42 as Priority }), "priority"],
      [() => c.tasks.submitTask({ type: "noop", queue: "bad{queue}" }), "queue"],
    ];
    for (const [call, field] of cases) {
      const err = await call().then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
      expect(err?.code, field).toBe(Code.InvalidArgument);
      expect(err?.rawMessage.startsWith(`${field}:`), err?.rawMessage).toBe(true);
    }
    const after = await c.tasks.listTasks({ pageSize: 1000 });
    expect(after.tasks.length).toBe(before.tasks.length);
  });

  it("serves the same API over Connect (JSON, HTTP/1.1) and gRPC-Web", async () => {
    const auth: Interceptor = (next) => (req) => {
      req.header.set("x-api-key", apiKey);
      return next(req);
    };
    const transports = [
      createConnectTransport({ baseUrl: `http://${mesh.gateway.address}`, httpVersion: "1.1", interceptors: [auth] }),
      createConnectTransport({ baseUrl: `http://${mesh.gateway.address}`, httpVersion: "2", useBinaryFormat: true, interceptors: [auth] }),
      createGrpcWebTransport({ baseUrl: `http://${mesh.gateway.address}`, httpVersion: "1.1", interceptors: [auth] }),
    ];
    for (const transport of transports) {
      const tasks = createClient(TaskService, transport);
      const t = await tasks.submitTask({ type: "data_processing", payload: { data: [{ n: 21 }] } });
      const events: TaskEvent[] = [];
      for await (const ev of tasks.watchTask({ taskId: t.id })) events.push(ev);
      expect(events.at(-1)?.task?.status).toBe(TaskStatus.SUCCEEDED);
      const got = await tasks.getTask({ taskId: t.id });
      expect(got.result).toEqual({ processed_data: [{ n: 42 }], items_processed: 1 });
      const page = await tasks.listTasks({ type: "data_processing", pageSize: 5 });
      expect(page.tasks.length).toBeGreaterThan(0);
    }
  });

  it("exposes Prometheus metrics and health on every service, with per-queue depth gauges on the scheduler", async () => {
    await waitTerminal(c.tasks, [(await c.tasks.submitTask({ type: "noop" })).id]);
    for (const p of [mesh.gateway, ...mesh.schedulers, ...mesh.workers]) {
      const health = await fetch(`http://${p.address}/healthz`);
      expect(health.status).toBe(200);
      const text = await (await fetch(`http://${p.address}/metrics`)).text();
      expect(text).toContain("taskmesh_rpc_requests_total");
      expect(text).toContain("process_cpu_seconds_total");
    }
    const sched = await (await fetch(`http://${mesh.schedulers[0]?.address}/metrics`)).text();
    expect(sched).toMatch(/taskmesh_queue_tasks\{[^}]*queue="default"[^}]*status="queued"[^}]*\} \d+/);
    expect(sched).toMatch(/taskmesh_queue_oldest_queued_age_seconds\{[^}]*queue="default"[^}]*\} [\d.]+/);
    expect(sched).toMatch(/taskmesh_scheduler_leader\{[^}]*\} 1/);
    const worker = await (await fetch(`http://${mesh.workers[0]?.address}/metrics`)).text();
    expect(worker).toMatch(/taskmesh_worker_slots\{[^}]*\} 16/);
    // promtool lints each live service's own families (prom-client's default gauges named *_total
    // are the one finding it reports on the whole page, and are not ours to rename).
    for (const p of [mesh.gateway, ...mesh.schedulers, ...mesh.workers]) {
      const text = await (await fetch(`http://${p.address}/metrics`)).text();
      const ours = text
        .split("\n")
        .filter((l) => /^(# (HELP|TYPE) )?taskmesh_/.test(l))
        .join("\n");
      const result = await new Promise<{ code: number | null; out: string }>((resolve) => {
        const child = execFile("promtool", ["check", "metrics"], { timeout: 20_000 }, (err, stdout, stderr) =>
          resolve({ code: err === null ? 0 : typeof err.code === "number" ? err.code : null, out: stdout + stderr }),
        );
        // A tool that exits without reading its input closes the pipe: not an error of the test.
        child.stdin?.on("error", () => undefined);
        child.stdin?.end(`${ours}\n`);
      });
      expect(result, `${p.name}: ${result.out}`).toEqual({ code: 0, out: "" });
    }
  });

  it("answers NOT_FOUND for unknown tasks and UNAUTHENTICATED without the key", async () => {
    await expect(c.tasks.getTask({ taskId: "01JZZZZZZZZZZZZZZZZZZZZZZZ" })).rejects.toMatchObject({ code: Code.NotFound });
    const anonymous = gatewayClients(mesh.gateway.address);
    await expect(anonymous.tasks.submitTask({ type: "noop" })).rejects.toMatchObject({ code: Code.Unauthenticated });
    const wrong = gatewayClients(mesh.gateway.address, "not-the-key");
    await expect(wrong.tasks.getTask({ taskId: "x" })).rejects.toMatchObject({ code: Code.Unauthenticated });
  });
});
