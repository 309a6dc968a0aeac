/**
 * Bad input is the client's error, on every protocol the gateway speaks: property-based fuzzing
 * (fast-check, fixed seed, bounded runs) of gRPC frames, Connect binary, Connect JSON, Connect
 * GET and REST bodies against a real gateway and scheduler. Whatever the bytes, the answer is
 * never a server error (gRPC INTERNAL/UNKNOWN, HTTP 5xx), and nothing is stored unless the call
 * succeeded.
 */
import * as http2 from "node:http2";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { gatewayClients } from "../support/clients.js";
import { uniquePrefix } from "../support/ids.js";
import { startMesh, type Mesh } from "../support/mesh.js";

const SEED = 20261202;
/** Codes a server error would have: none of them may come back for client input. */
const SERVER_ERRORS = new Set(["2", "13", "14", "15"]); // UNKNOWN, INTERNAL, UNAVAILABLE, DATA_LOSS

interface Answer {
  status: number;
  grpcStatus: string | undefined;
  body: string;
}

describe("bad input on every protocol: the client's error, never ours", () => {
  let mesh: Mesh;
  let session: http2.ClientHttp2Session;
  const calls: string[] = [];

  /** One request over the gateway's HTTP/2 connection; the answer's status and gRPC status. */
  const call = (path: string, headers: http2.OutgoingHttpHeaders, body: Uint8Array | string | undefined): Promise<Answer> =>
    new Promise((resolve, reject) => {
      const req = session.request({ ":method": body === undefined ? "GET" : "POST", ":path": path, authorization: `Bearer ${mesh.apiKey}`, ...headers });
      let status = 0;
      let grpcStatus: string | undefined;
      const chunks: Buffer[] = [];
      req.on("response", (h) => {
        status = Number(h[":status"]);
        if (h["grpc-status"] !== undefined) grpcStatus = String(h["grpc-status"]);
      });
      req.on("trailers", (t) => {
        if (t["grpc-status"] !== undefined) grpcStatus = String(t["grpc-status"]);
      });
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => resolve({ status, grpcStatus, body: Buffer.concat(chunks).toString("utf8").slice(0, 300) }));
      req.on("error", reject);
      req.setTimeout(10_000, () => req.close(http2.constants.NGHTTP2_CANCEL));
      req.end(body);
    });

  const grpcFrame = (message: Uint8Array): Buffer => {
    const head = Buffer.alloc(5);
    head.writeUInt32BE(message.length, 1);
    return Buffer.concat([head, message]);
  };

  /** Fails with the input when the answer is a server error. */
  const expectClientError = (what: string, input: unknown, a: Answer): void => {
    const serverError = a.status >= 500 || (a.grpcStatus !== undefined && SERVER_ERRORS.has(a.grpcStatus));
    if (serverError) throw new Error(`${what}: server error ${a.status}/${a.grpcStatus ?? "-"} ${a.body} for ${JSON.stringify(input).slice(0, 200)}`);
    if (a.status === 200 && (a.grpcStatus === undefined || a.grpcStatus === "0")) calls.push(what);
  };

  const count = async (): Promise<number> => {
    const { tasks } = gatewayClients(mesh.gateway.address, mesh.apiKey);
    let n = 0;
    let pageToken = "";
    for (let i = 0; i < 100; i++) {
      const page = await tasks.listTasks({ pageSize: 1000, pageToken });
      n += page.tasks.length;
      pageToken = page.nextPageToken;
      if (pageToken === "") break;
    }
    return n;
  };

  beforeAll(async () => {
    mesh = await startMesh({ etcdEndpoint: inject("etcdEndpoint"), redisUrl: inject("redisUrl"), prefix: uniquePrefix("badin"), workers: 0 });
    session = http2.connect(`http://${mesh.gateway.address}`);
    session.on("error", () => undefined);
  });
  afterAll(async () => {
    session?.close();
    await mesh?.close();
  });

  it("gRPC: random message bytes, and frames of the wrong length, to every task method", async () => {
    const before = await count();
    const methods = ["SubmitTask", "SubmitTasks", "GetTask", "ListTasks", "CancelTask", "RetryTask"];
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...methods), fc.uint8Array({ maxLength: 300 }), async (method, bytes) => {
        const a = await call(`/taskmesh.v1.TaskService/${method}`, { "content-type": "application/grpc", te: "trailers" }, grpcFrame(bytes));
        expectClientError(`grpc ${method}`, Buffer.from(bytes).toString("hex"), a);
      }),
      { seed: SEED, numRuns: 300 },
    );
    // Frames whose length prefix lies.
    for (const raw of [Buffer.from([0, 0, 0, 0, 9, 1, 2]), Buffer.from([1, 0, 0, 0, 1, 0]), Buffer.from([0, 255, 255, 255, 255])]) {
      expectClientError("grpc framing", raw.toString("hex"), await call("/taskmesh.v1.TaskService/SubmitTask", { "content-type": "application/grpc", te: "trailers" }, raw));
    }
    expect(await count()).toBe(before + calls.filter((c) => c.startsWith("grpc Submit")).length);
  }, 120_000);

  it("Connect and gRPC-Web: random binary and JSON bodies, and GET messages that are not base64", async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ maxLength: 300 }), async (bytes) => {
        const a = await call("/taskmesh.v1.TaskService/SubmitTask", { "content-type": "application/proto" }, bytes);
        expectClientError("connect proto", Buffer.from(bytes).toString("hex"), a);
      }),
      { seed: SEED, numRuns: 200 },
    );
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ maxLength: 300 }), async (bytes) => {
        const a = await call("/taskmesh.v1.TaskService/SubmitTask", { "content-type": "application/grpc-web+proto" }, grpcFrame(bytes));
        expectClientError("grpc-web", Buffer.from(bytes).toString("hex"), a);
      }),
      { seed: SEED, numRuns: 200 },
    );
    await fc.assert(
      fc.asyncProperty(fc.oneof(fc.json({ maxDepth: 6 }), fc.string({ maxLength: 200 })), async (text) => {
        const a = await call("/taskmesh.v1.TaskService/SubmitTask", { "content-type": "application/json" }, text);
        expectClientError("connect json", text, a);
      }),
      { seed: SEED, numRuns: 200 },
    );
    await fc.assert(
      fc.asyncProperty(fc.string({ maxLength: 80 }), async (message) => {
        const q = new URLSearchParams({ connect: "v1", encoding: "proto", base64: "1", message });
        const a = await call(`/taskmesh.v1.TaskService/GetTask?${q}`, {}, undefined);
        expectClientError("connect get", message, a);
      }),
      { seed: SEED, numRuns: 200 },
    );
  }, 120_000);

  it("REST and deep nesting: random JSON bodies, payloads nested 1 to 120 levels", async () => {
    await fc.assert(
      fc.asyncProperty(fc.oneof(fc.json({ maxDepth: 8 }), fc.string({ maxLength: 200 })), async (text) => {
        const a = await call("/v1/tasks", { "content-type": "application/json" }, text);
        expectClientError("rest", text, a);
      }),
      { seed: SEED, numRuns: 200 },
    );
    const nested = (depth: number): unknown => {
      let v: unknown = 1;
      for (let i = 0; i < depth; i++) v = { a: v };
      return v;
    };
    for (const depth of [1, 10, 31, 32, 50, 64, 98, 99, 120]) {
      const body = JSON.stringify({ type: "noop", payload: { x: nested(depth) } });
      for (const [path, ct] of [
        ["/v1/tasks", "application/json"],
        ["/taskmesh.v1.TaskService/SubmitTask", "application/json"],
      ] as const) {
        const a = await call(path, { "content-type": ct }, body);
        expectClientError(`nested ${depth} ${path}`, depth, a);
      }
    }
  }, 120_000);
});
