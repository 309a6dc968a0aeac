import * as http2 from "node:http2";
import * as net from "node:net";
import { execFile } from "node:child_process";
import { resolve } from "node:path";
import { Writable } from "node:stream";
import { promisify } from "node:util";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  Health,
  HealthCheckRequestSchema,
  HealthCheckResponseSchema,
  HealthCheckResponse_ServingStatus as ServingStatus,
  type HealthCheckResponse,
} from "../../gen/grpc/health/v1/health_pb.js";
import * as reflection from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { ConfigEntrySchema, ConfigService, file_taskmesh_v1_config_service } from "../../gen/taskmesh/v1/config_service_pb.js";
import { createLogger, silentLogger } from "../../lib/logger.js";
import { createRegistry } from "../../lib/metrics.js";
import { startServer, type RpcServer, type ServerOptions } from "../../lib/server.js";
import { waitFor } from "../support/wait.js";

const run = promisify(execFile);
const BUF = resolve(import.meta.dirname, "../../node_modules/.bin/buf");

/** Runs a command-line client against the in-process server (async: a sync call would deadlock). */
async function cli(cmd: string, args: string[]): Promise<string> {
  const { stdout } = await run(cmd, args, { timeout: 20_000 });
  return stdout;
}

/** curl's body, then the status and HTTP version it saw, each on its own line at the end. */
async function curl(args: string[]): Promise<{ body: string; status: number; version: string }> {
  const out = await cli("curl", ["-sS", "-w", "\n%{http_code} %{http_version}", ...args]);
  const cut = out.lastIndexOf("\n");
  const [status, version] = out.slice(cut + 1).split(" ");
  return { body: out.slice(0, cut), status: Number(status), version: version ?? "" };
}

/** Opens a bidi reflection stream, sends one request and returns the one answer. */
async function reflect(
  transport: Transport,
  request: reflection.ServerReflectionRequest["messageRequest"],
): Promise<reflection.ServerReflectionResponse> {
  const client = createClient(reflection.ServerReflection, transport);
  async function* one() {
    yield create(reflection.ServerReflectionRequestSchema, { messageRequest: request });
  }
  for await (const res of client.serverReflectionInfo(one())) return res;
  throw new Error("no reflection response");
}

function fileNames(res: reflection.ServerReflectionResponse): string[] {
  if (res.messageResponse.case !== "fileDescriptorResponse") throw new Error(`got ${res.messageResponse.case}`);
  return res.messageResponse.value.fileDescriptorProto.map((b) => fromBinary(FileDescriptorProtoSchema, b).name);
}

describe("startServer", () => {
  let server: RpcServer;
  let baseUrl: string;
  let grpcClients: grpc.Client[] = [];

  async function start(extra: Partial<ServerOptions> = {}): Promise<RpcServer> {
    const registry = createRegistry("test-svc");
    return startServer({
      name: "test-svc",
      port: 0,
      routes(router) {
        router.service(ConfigService, {
          async getConfig(req) {
            if (req.namespace === "missing") throw new ConnectError("namespace not found", Code.NotFound);
            // An answer that takes a moment (the client may have half-closed meanwhile).
            if (req.namespace === "slow") await new Promise((r) => setTimeout(r, 200));
            return create(ConfigEntrySchema, { namespace: req.namespace, author: "stub", revision: 7n });
          },
        });
      },
      files: [file_taskmesh_v1_config_service],
      registry,
      logger: silentLogger(),
      ...extra,
    });
  }

  function grpcClient(): grpc.Client {
    const client = new grpc.Client(server.address, grpc.credentials.createInsecure());
    grpcClients.push(client);
    return client;
  }

  function grpcCheck(client: grpc.Client, service: string): Promise<HealthCheckResponse> {
    return new Promise((ok, fail) => {
      client.makeUnaryRequest(
        "/grpc.health.v1.Health/Check",
        (req: { service: string }) => Buffer.from(toBinary(HealthCheckRequestSchema, create(HealthCheckRequestSchema, req))),
        (bytes: Buffer) => fromBinary(HealthCheckResponseSchema, bytes),
        { service },
        (err, res) => (err !== null || res === undefined ? fail(err) : ok(res)),
      );
    });
  }

  beforeEach(async () => {
    server = await start();
    baseUrl = `http://${server.address}`;
  });

  afterEach(async () => {
    for (const c of grpcClients) c.close();
    grpcClients = [];
    await server.close();
  });

  it("answers a plain @grpc/grpc-js client over h2c, with NOT_FOUND for unknown health names", async () => {
    expect(server.address).toBe(`127.0.0.1:${server.port}`);
    const client = grpcClient();
    expect((await grpcCheck(client, "")).status).toBe(ServingStatus.SERVING);
    expect((await grpcCheck(client, "test-svc")).status).toBe(ServingStatus.SERVING);
    expect((await grpcCheck(client, "taskmesh.v1.ConfigService")).status).toBe(ServingStatus.SERVING);
    await expect(grpcCheck(client, "no.such.Service")).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
  });

  it("serves connect gRPC over HTTP/2, Connect JSON and gRPC-Web over HTTP/1.1", async () => {
    const transports: Record<string, Transport> = {
      grpc: createGrpcTransport({ baseUrl }),
      connectJson: createConnectTransport({ baseUrl, httpVersion: "1.1", useBinaryFormat: false }),
      grpcWeb: createGrpcWebTransport({ baseUrl, httpVersion: "1.1" }),
    };
    for (const [name, transport] of Object.entries(transports)) {
      const config: Client<typeof ConfigService> = createClient(ConfigService, transport);
      const entry = await config.getConfig({ namespace: `ns-${name}` });
      expect(entry).toMatchObject({ namespace: `ns-${name}`, author: "stub", revision: 7n });
      await expect(config.getConfig({ namespace: "missing" })).rejects.toMatchObject({ code: Code.NotFound });
      const health = createClient(Health, transport);
      const list = await health.list({});
      expect(Object.keys(list.statuses).sort()).toEqual(["", "taskmesh.v1.ConfigService", "test-svc"]);
    }
  });

  it("answers curl over HTTP/1.1 and HTTP/2 prior knowledge on /healthz, /metrics and Connect JSON", async () => {
    await createClient(ConfigService, createGrpcTransport({ baseUrl })).getConfig({ namespace: "a" });
    for (const [i, flag] of ["--http1.1", "--http2-prior-knowledge"].entries()) {
      const healthz = await curl([flag, `${baseUrl}/healthz`]);
      expect(healthz).toEqual({ body: '{"status":"SERVING"}', status: 200, version: flag === "--http1.1" ? "1.1" : "2" });

      const metrics = await curl([flag, `${baseUrl}/metrics`]);
      expect(metrics.status).toBe(200);
      expect(metrics.body).toContain("# TYPE taskmesh_rpc_requests_total counter");
      expect(metrics.body).toContain(
        `taskmesh_rpc_requests_total{service="test-svc",method="taskmesh.v1.ConfigService/GetConfig",code="OK"} ${i + 1}`,
      );
      expect(metrics.body).toContain(
        `taskmesh_rpc_duration_seconds_count{service="test-svc",method="taskmesh.v1.ConfigService/GetConfig"} ${i + 1}`,
      );
      expect(metrics.body).toContain('process_cpu_user_seconds_total{service="test-svc"}');

      const json = await curl([
        flag,
        "-X", "POST",
        "-H", "content-type: application/json",
        "-d", '{"namespace":"curl"}',
        `${baseUrl}/taskmesh.v1.ConfigService/GetConfig`,
      ]);
      expect(json.status).toBe(200);
      expect(JSON.parse(json.body)).toEqual({ namespace: "curl", revision: "7", author: "stub" });

      expect((await curl([flag, `${baseUrl}/nothing-here`])).status).toBe(404);
    }
    server.setServing(false);
    const down = await curl(["--http1.1", `${baseUrl}/healthz`]);
    expect(down).toMatchObject({ status: 503, body: '{"status":"NOT_SERVING"}' });
  });

  it("lists services and calls methods with buf curl through reflection (v1 and v1alpha), no schema", async () => {
    for (const reflectProtocol of ["grpc-v1", "grpc-v1alpha"]) {
      const common = ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "--reflect-protocol", reflectProtocol];
      const services = await cli(BUF, [...common, "--list-services", baseUrl]);
      expect(services.trim().split("\n").sort()).toEqual([
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "taskmesh.v1.ConfigService",
      ]);
      const methods = await cli(BUF, [...common, "--list-methods", baseUrl]);
      expect(methods).toContain("grpc.health.v1.Health/Watch");
      expect(methods).toContain("taskmesh.v1.ConfigService/RollbackConfig");

      const check = await cli(BUF, [...common, `${baseUrl}/grpc.health.v1.Health/Check`]);
      expect(JSON.parse(check)).toEqual({ status: "SERVING" });
      // ConfigService imports google/api/annotations (→ descriptor.proto), struct and timestamp:
      // resolving it needs every transitive dependency.
      const entry = await cli(BUF, [...common, "-d", '{"namespace":"via-buf"}', `${baseUrl}/taskmesh.v1.ConfigService/GetConfig`]);
      expect(JSON.parse(entry)).toEqual({ namespace: "via-buf", revision: "7", author: "stub" });
    }
  });

  it("reflection finds nested symbols, returns each dependency once and NOT_FOUND for unknowns", async () => {
    const transport = createGrpcTransport({ baseUrl });
    const nested = await reflect(transport, {
      case: "fileContainingSymbol",
      value: "grpc.health.v1.HealthCheckResponse.ServingStatus",
    });
    expect(fileNames(nested)).toEqual(["grpc/health/v1/health.proto"]);

    const config = fileNames(await reflect(transport, { case: "fileContainingSymbol", value: "taskmesh.v1.ConfigService.GetConfig" }));
    expect(config[0]).toBe("taskmesh/v1/config_service.proto");
    expect(new Set(config).size).toBe(config.length);
    expect([...config].sort()).toEqual([
      "google/api/annotations.proto",
      "google/api/http.proto",
      "google/protobuf/descriptor.proto",
      "google/protobuf/struct.proto",
      "google/protobuf/timestamp.proto",
      "taskmesh/v1/config_service.proto",
    ]);

    for (const value of ["taskmesh.v1.ConfigEntry", "taskmesh.v1.ConfigEvent.Type", "taskmesh.v1.ConfigEvent.TYPE_PUT"]) {
      expect(fileNames(await reflect(transport, { case: "fileContainingSymbol", value }))[0]).toBe(
        "taskmesh/v1/config_service.proto",
      );
    }
    expect(fileNames(await reflect(transport, { case: "fileByFilename", value: "google/protobuf/struct.proto" }))).toEqual([
      "google/protobuf/struct.proto",
    ]);
    expect(fileNames(await reflect(transport, { case: "fileByFilename", value: "grpc/reflection/v1alpha/reflection.proto" }))).toEqual([
      "grpc/reflection/v1alpha/reflection.proto",
    ]);

    const extensions = await reflect(transport, { case: "allExtensionNumbersOfType", value: "google.protobuf.MethodOptions" });
    expect(extensions.messageResponse).toMatchObject({
      case: "allExtensionNumbersResponse",
      value: { baseTypeName: "google.protobuf.MethodOptions", extensionNumber: [72295728] }, // google.api.http
    });

    for (const request of [
      { case: "fileContainingSymbol", value: "taskmesh.v1.NoSuchThing" },
      { case: "fileByFilename", value: "nope.proto" },
    ] as const) {
      const res = await reflect(transport, request);
      expect(res.messageResponse).toMatchObject({ case: "errorResponse", value: { errorCode: Code.NotFound } });
    }
  });

  it("streams health changes to a Watch: SERVING, then NOT_SERVING after setServing(false)", async () => {
    const health = createClient(Health, createGrpcTransport({ baseUrl }));
    const abort = new AbortController();
    const stream = health.watch({ service: "taskmesh.v1.ConfigService" }, { signal: abort.signal })[Symbol.asyncIterator]();
    expect((await stream.next()).value).toMatchObject({ status: ServingStatus.SERVING });
    server.setServing(false);
    expect((await stream.next()).value).toMatchObject({ status: ServingStatus.NOT_SERVING });
    server.setServing(true);
    expect((await stream.next()).value).toMatchObject({ status: ServingStatus.SERVING });

    const unknown = health.watch({ service: "not.Served" }, { signal: abort.signal })[Symbol.asyncIterator]();
    expect((await unknown.next()).value).toMatchObject({ status: ServingStatus.SERVICE_UNKNOWN });
    abort.abort();
    await expect(stream.next()).rejects.toMatchObject({ code: Code.Canceled });
    // The metrics interceptor sees both streams end as cancelled and no longer in flight.
    const labels = 'service="test-svc",method="grpc.health.v1.Health/Watch"';
    await waitFor(
      async () => {
        const { body } = await curl(["--http1.1", `${baseUrl}/metrics`]);
        return body.includes(`taskmesh_rpc_in_flight{${labels}} 0`) &&
          body.includes(`taskmesh_rpc_requests_total{${labels},code="CANCELLED"} 2`);
      },
      { what: "Watch streams counted as CANCELLED" },
    );
  });

  it("closes promptly while a grpc-js connection and a Watch stream are open, and twice", async () => {
    const client = grpcClient();
    await grpcCheck(client, "");
    expect(client.getChannel().getConnectivityState(false)).toBe(grpc.connectivityState.READY);

    const health = createClient(Health, createGrpcTransport({ baseUrl }));
    const stream = health.watch({ service: "" })[Symbol.asyncIterator]();
    await stream.next();
    // An HTTP/1.1 keep-alive connection, idle after one call.
    await createClient(Health, createGrpcWebTransport({ baseUrl, httpVersion: "1.1" })).check({});

    const started = Date.now();
    await server.close();
    expect(Date.now() - started).toBeLessThan(1000);
    await server.close();
    // The open stream ends (UNAVAILABLE from the shutdown, or a clean end), it does not hang.
    await stream.next().then(
      (r) => expect(r.done).toBe(true),
      (err: unknown) => expect(ConnectError.from(err).code).toBe(Code.Unavailable),
    );
    await waitFor(() => client.getChannel().getConnectivityState(false) !== grpc.connectivityState.READY, {
      what: "grpc-js channel to leave READY",
    });
    await expect(curl(["--http1.1", `${baseUrl}/healthz`])).rejects.toThrow();
  });

  it("destroys connections whose calls outlive shutdownGraceMs", async () => {
    await server.close();
    let release = (): void => {};
    const released = new Promise<void>((r) => {
      release = r;
    });
    let entered = false;
    server = await start({
      shutdownGraceMs: 200,
      routes(router) {
        router.service(ConfigService, {
          // Ignores ctx.signal on purpose: only the grace period can end this call.
          async getConfig() {
            entered = true;
            await released;
            return create(ConfigEntrySchema, {});
          },
        });
      },
    });
    baseUrl = `http://${server.address}`;
    const call = createClient(ConfigService, createGrpcTransport({ baseUrl })).getConfig({ namespace: "slow" });
    await waitFor(() => entered, { what: "the call to reach its handler" });
    const started = Date.now();
    await server.close();
    const took = Date.now() - started;
    expect(took).toBeGreaterThanOrEqual(190);
    expect(took).toBeLessThan(1500);
    await expect(call).rejects.toBeInstanceOf(ConnectError);
    release();
  });

  it("logs one line when listening and one when closed", async () => {
    await server.close();
    const lines: Array<{ msg: string; address?: string; server?: string }> = [];
    const destination = new Writable({
      write(chunk: Buffer, _enc, done) {
        lines.push(JSON.parse(chunk.toString()) as (typeof lines)[number]);
        done();
      },
    });
    server = await start({ logger: createLogger("test-svc", { destination }) });
    await server.close();
    expect(lines.map((l) => [l.msg, l.address, l.server])).toEqual([
      ["server listening", server.address, "test-svc"],
      ["server closed", server.address, "test-svc"],
    ]);
  });

  it("hands unknown plain HTTP requests to httpFallback", async () => {
    await server.close();
    server = await start({
      httpFallback(req, res) {
        if (req.url !== "/v1/hello") return false;
        res.writeHead(200, { "content-type": "text/plain" });
        res.end("hi");
        return true;
      },
    });
    baseUrl = `http://${server.address}`;
    for (const flag of ["--http1.1", "--http2-prior-knowledge"]) {
      expect(await curl([flag, `${baseUrl}/v1/hello`])).toMatchObject({ status: 200, body: "hi" });
      expect((await curl([flag, `${baseUrl}/v1/other`])).status).toBe(404);
    }
  });
  it("survives HTTP/2 streams reset while their admission is awaited", async () => {
    await server.close();
    let admitted = 0;
    server = await start({
      fastUnary: new Map([["/x.Y/Z", async () => new Uint8Array()]]),
      admit: async () => {
        // Long enough for the client's reset to arrive first.
        await new Promise((r) => setTimeout(r, 50));
        admitted++;
        return true;
      },
    });
    const session = http2.connect(`http://${server.address}`);
    session.on("error", () => undefined);
    const resets = Array.from({ length: 20 }, (_, i) => {
      const req = session.request({ ":method": "POST", ":path": i % 2 === 0 ? "/x.Y/Z" : "/taskmesh.v1.ConfigService/GetConfig", "content-type": "application/grpc" });
      req.on("error", () => undefined);
      req.write(Buffer.alloc(10));
      req.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
      return new Promise((r) => req.on("close", r));
    });
    await Promise.all(resets);
    await waitFor(() => admitted >= 10, { what: "admissions done" });
    session.close();
    // Still serving.
    expect((await curl(["--http2-prior-knowledge", `http://${server.address}/healthz`])).status).toBe(200);
  });

  it("answers an HTTP/1 client that half-closes its side after sending an async request", async () => {
    const [host, port] = server.address.split(":") as [string, string];
    const body = JSON.stringify({ namespace: "slow" });
    const answer = await new Promise<string>((resolve, reject) => {
      const s = net.connect({ host, port: Number(port) }, () => {
        s.end(
          `POST /taskmesh.v1.ConfigService/GetConfig HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
        );
      });
      let buf = "";
      s.on("data", (b) => (buf += b.toString()));
      s.on("close", () => resolve(buf));
      s.on("error", reject);
      s.setTimeout(5000, () => s.destroy(new Error("no answer after the half-close")));
    });
    expect(answer).toMatch(/^HTTP\/1\.1 200 /);
    expect(answer).toContain('"author":"stub"');
  });
});

describe("startServer with TLS", () => {
  it("negotiates HTTP/2 and HTTP/1.1 by ALPN on one port", async () => {
    const { mkdtemp, readFile, rm } = await import("node:fs/promises");
    const { tmpdir } = await import("node:os");
    const { join } = await import("node:path");
    const dir = await mkdtemp(join(tmpdir(), "taskmesh-tls-"));
    try {
      await run("openssl", [
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        "-keyout", join(dir, "key.pem"), "-out", join(dir, "cert.pem"),
      ], { timeout: 30_000 });
      const cert = await readFile(join(dir, "cert.pem"));
      const server = await startServer({
        name: "tls-test",
        port: 0,
        routes: () => undefined,
        files: [],
        registry: createRegistry("tls-test"),
        logger: silentLogger(),
        tls: { cert, key: await readFile(join(dir, "key.pem")) },
      });
      try {
        for (const proto of ["--http1.1", "--http2"]) {
          const { stdout } = await run(
            "curl",
            ["-sS", proto, "--cacert", join(dir, "cert.pem"), "-w", " %{http_version}", `https://${server.address}/healthz`],
            { timeout: 10_000 },
          );
          expect(stdout).toBe(`{"status":"SERVING"} ${proto === "--http2" ? "2" : "1.1"}`);
        }
        const health = createClient(
          Health,
          createGrpcTransport({ baseUrl: `https://${server.address}`, nodeOptions: { ca: cert } }),
        );
        expect((await health.check({ service: "" })).status).toBe(ServingStatus.SERVING);
      } finally {
        await server.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
