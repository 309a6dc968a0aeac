import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { compressionGzip, createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import { BadRequestSchema } from "../../gen/google/rpc/error_details_pb.js";
import {
  ConfigEntrySchema,
  ConfigService,
  GetConfigRequestSchema,
  file_taskmesh_v1_config_service,
} from "../../gen/taskmesh/v1/config_service_pb.js";
import { unaryClient } from "../../lib/client.js";
import { GrpcChannel } from "../../lib/grpc-channel.js";
import { FAST_PATH } from "../../lib/grpc-fast.js";
import { silentLogger } from "../../lib/logger.js";
import { createRegistry } from "../../lib/metrics.js";
import { startServer, type RpcServer, type ServerOptions } from "../../lib/server.js";
import { freePort } from "../support/ports.js";
import { waitFor } from "../support/wait.js";

/**
 * The fast unary gRPC path (lib/grpc-fast.ts) and its client (lib/grpc-channel.ts): plain gRPC
 * calls must behave exactly as connect-node's would — same answers, codes, messages, details,
 * deadlines, cancellation and metrics — while every other protocol still goes to connect-node.
 */
describe("fast unary gRPC path", () => {
  const servers: RpcServer[] = [];
  const channels: GrpcChannel[] = [];
  const grpcClients: grpc.Client[] = [];
  afterEach(async () => {
    for (const c of channels.splice(0)) c.close();
    for (const c of grpcClients.splice(0)) c.close();
    await Promise.all(servers.splice(0).map((s) => s.close()));
  });

  /** Where the handler saw its calls: protocol name and the tenant header. */
  interface Seen {
    protocol: string;
    tenant: string | null;
  }

  async function start(extra: Partial<ServerOptions> = {}, hooks: { slow?: (signal: AbortSignal) => Promise<void> } = {}) {
    const registry = createRegistry("fast-svc");
    const seen: Seen[] = [];
    const server = await startServer({
      name: "fast-svc",
      port: 0,
      routes(router) {
        router.service(ConfigService, {
          async getConfig(req, ctx) {
            seen.push({ protocol: ctx.values.get(FAST_PATH) ? "fast" : ctx.protocolName, tenant: ctx.requestHeader.get("x-tenant") });
            if (req.namespace === "missing") throw new ConnectError("namespace not found", Code.NotFound);
            if (req.namespace === "bad") {
              throw new ConnectError("namespace: bad name", Code.InvalidArgument, { "retry-after": "3" }, [
                {
                  desc: BadRequestSchema,
                  value: create(BadRequestSchema, { fieldViolations: [{ field: "namespace", description: "bad name" }] }),
                },
              ]);
            }
            if (req.namespace === "boom") throw new Error("secret internal detail");
            if (req.namespace === "slow") await hooks.slow?.(ctx.signal);
            return create(ConfigEntrySchema, { namespace: req.namespace, author: "fast", revision: 7n });
          },
        });
      },
      files: [file_taskmesh_v1_config_service],
      registry,
      logger: silentLogger(),
      ...extra,
    });
    servers.push(server);
    return { server, registry, seen };
  }

  const requestsTotal = async (registry: ReturnType<typeof createRegistry>, code: string): Promise<number> => {
    const m = await registry.getSingleMetric("taskmesh_rpc_requests_total")?.get();
    return (m?.values ?? [])
      .filter((v) => v.labels.method === "taskmesh.v1.ConfigService/GetConfig" && v.labels.code === code)
      .reduce((a, v) => a + v.value, 0);
  };

  it("answers plain gRPC from grpc-js, connect and its own channel; other protocols still reach connect-node", async () => {
    const { server, registry, seen } = await start();
    const baseUrl = `http://${server.address}`;
    const headers = { "x-tenant": "acme" };
    // connect's gRPC transport sends application/grpc+proto: the fast path.
    const viaConnect = await createClient(ConfigService, createGrpcTransport({ baseUrl })).getConfig({ namespace: "a" }, { headers });
    expect(viaConnect).toMatchObject({ namespace: "a", author: "fast", revision: 7n });
    // grpc-js sends application/grpc: the fast path.
    const G = grpc.makeGenericClientConstructor(
      {
        getConfig: {
          path: "/taskmesh.v1.ConfigService/GetConfig",
          requestStream: false,
          responseStream: false,
          requestSerialize: (x: Uint8Array) => Buffer.from(x),
          requestDeserialize: (x: Buffer) => x,
          responseSerialize: (x: Uint8Array) => Buffer.from(x),
          responseDeserialize: (x: Buffer) => fromBinary(ConfigEntrySchema, x),
        },
      },
      "ConfigService",
    );
    const gc = new G(server.address, grpc.credentials.createInsecure()) as unknown as grpc.Client & {
      getConfig(req: Uint8Array, md: grpc.Metadata, cb: (err: grpc.ServiceError | null, res?: unknown) => void): void;
    };
    grpcClients.push(gc);
    const md = new grpc.Metadata();
    md.set("x-tenant", "acme");
    const viaGrpcJs = await new Promise((res, rej) =>
      gc.getConfig(toBinary(GetConfigRequestSchema, create(GetConfigRequestSchema, { namespace: "b" })), md, (err, r) =>
        err ? rej(err) : res(r),
      ),
    );
    expect(viaGrpcJs).toMatchObject({ namespace: "b", author: "fast" });
    const ch = new GrpcChannel(server.address);
    channels.push(ch);
    const raw = await ch.unary(
      "/taskmesh.v1.ConfigService/GetConfig",
      toBinary(GetConfigRequestSchema, create(GetConfigRequestSchema, { namespace: "c" })),
      headers,
      5000,
    );
    expect(fromBinary(ConfigEntrySchema, raw)).toMatchObject({ namespace: "c", author: "fast" });
    // Connect and gRPC-Web go through connect-node.
    await createClient(ConfigService, createConnectTransport({ baseUrl, httpVersion: "1.1" })).getConfig({ namespace: "d" }, { headers });
    await createClient(ConfigService, createGrpcWebTransport({ baseUrl, httpVersion: "1.1" })).getConfig({ namespace: "e" }, { headers });
    expect(seen).toEqual([
      { protocol: "fast", tenant: "acme" },
      { protocol: "fast", tenant: "acme" },
      { protocol: "fast", tenant: "acme" },
      { protocol: "connect", tenant: "acme" },
      { protocol: "grpc-web", tenant: "acme" },
    ]);
    // The fast calls are counted in the same series as connect's.
    expect(await requestsTotal(registry, "OK")).toBe(5);
  });

  it("sends errors as connect does: code, message, details and metadata; hides internal errors", async () => {
    const { server, registry } = await start();
    const client = createClient(ConfigService, createGrpcTransport({ baseUrl: `http://${server.address}` }));
    const err = await client.getConfig({ namespace: "bad" }).then(
      () => undefined,
      (e: unknown) => ConnectError.from(e),
    );
    expect(err).toBeInstanceOf(ConnectError);
    expect(err).toMatchObject({ code: Code.InvalidArgument, rawMessage: "namespace: bad name" });
    expect(err?.metadata.get("retry-after")).toBe("3");
    expect(err?.findDetails(BadRequestSchema)[0]?.fieldViolations[0]).toMatchObject({ field: "namespace", description: "bad name" });
    await expect(client.getConfig({ namespace: "missing" })).rejects.toMatchObject({ code: Code.NotFound, rawMessage: "namespace not found" });
    const internal = await client.getConfig({ namespace: "boom" }).then(
      () => undefined,
      (e: unknown) => ConnectError.from(e),
    );
    expect(internal?.code).toBe(Code.Internal);
    expect(internal?.rawMessage).not.toContain("secret");
    // Through the byte-forwarding channel, the same error arrives with its details intact.
    const ch = new GrpcChannel(server.address);
    channels.push(ch);
    const forwarded = await ch
      .unary("/taskmesh.v1.ConfigService/GetConfig", toBinary(GetConfigRequestSchema, create(GetConfigRequestSchema, { namespace: "bad" })), {}, 5000)
      .then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
    expect(forwarded).toMatchObject({ code: Code.InvalidArgument, rawMessage: "namespace: bad name" });
    expect(forwarded?.findDetails(BadRequestSchema)).toHaveLength(1);
    expect(await requestsTotal(registry, "INVALID_ARGUMENT")).toBe(2);
    expect(await requestsTotal(registry, "INTERNAL")).toBe(1);
  });

  it("ends a call at its deadline and aborts the handler; a client that goes away aborts it too", async () => {
    let aborted = 0;
    const { server } = await start(
      {},
      {
        slow: (signal) =>
          new Promise<void>((resolve) =>
            signal.addEventListener("abort", () => {
              aborted++;
              resolve();
            }),
          ),
      },
    );
    const client = createClient(ConfigService, createGrpcTransport({ baseUrl: `http://${server.address}` }));
    const started = performance.now();
    await expect(client.getConfig({ namespace: "slow" }, { timeoutMs: 150 })).rejects.toMatchObject({ code: Code.DeadlineExceeded });
    expect(performance.now() - started).toBeLessThan(2000);
    await waitFor(() => aborted === 1, { what: "the handler to see the deadline" });
    const ctl = new AbortController();
    const call = client.getConfig({ namespace: "slow" }, { signal: ctl.signal });
    setImmediate(() => ctl.abort());
    await expect(call).rejects.toMatchObject({ code: Code.Canceled });
    await waitFor(() => aborted === 2, { what: "the handler to see the client leave" });
  });

  it("is not used by servers with interceptors (they could not run) nor for compressed requests", async () => {
    let intercepted = 0;
    const count: Interceptor = (next) => (req) => {
      intercepted++;
      return next(req);
    };
    const { server, seen } = await start({ interceptors: [count] });
    const client = createClient(ConfigService, createGrpcTransport({ baseUrl: `http://${server.address}` }));
    await client.getConfig({ namespace: "x" });
    expect(intercepted).toBe(1);
    expect(seen[0]?.protocol).toBe("grpc");
    // A gzip request goes to connect-node, which (like every taskmesh server) accepts none.
    const plain = await start();
    const gzip = createClient(
      ConfigService,
      createGrpcTransport({ baseUrl: `http://${plain.server.address}`, sendCompression: compressionGzip, compressMinBytes: 0 }),
    );
    await expect(gzip.getConfig({ namespace: "x" })).rejects.toMatchObject({ code: Code.Unimplemented });
    expect(plain.seen).toEqual([]);
  });

  it("channel: UNAVAILABLE when nothing listens, DEADLINE_EXCEEDED when nobody answers, reconnects after a restart", async () => {
    const port = await freePort();
    const ch = new GrpcChannel(`127.0.0.1:${port}`);
    channels.push(ch);
    const req = toBinary(GetConfigRequestSchema, create(GetConfigRequestSchema, { namespace: "n" }));
    await expect(ch.unary("/taskmesh.v1.ConfigService/GetConfig", req, {}, 2000)).rejects.toMatchObject({ code: Code.Unavailable });
    const { server } = await start({ port }, { slow: () => new Promise(() => undefined) });
    const ok = await ch.unary("/taskmesh.v1.ConfigService/GetConfig", req, {}, 2000);
    expect(fromBinary(ConfigEntrySchema, ok).namespace).toBe("n");
    const slow = toBinary(GetConfigRequestSchema, create(GetConfigRequestSchema, { namespace: "slow" }));
    await expect(ch.unary("/taskmesh.v1.ConfigService/GetConfig", slow, {}, 100)).rejects.toMatchObject({ code: Code.DeadlineExceeded });
    // The server goes away and comes back on the same port: the channel dials again.
    await server.close();
    servers.splice(servers.indexOf(server), 1);
    await expect(ch.unary("/taskmesh.v1.ConfigService/GetConfig", req, {}, 2000)).rejects.toMatchObject({ code: Code.Unavailable });
    await start({ port });
    const again = await ch.unary("/taskmesh.v1.ConfigService/GetConfig", req, {}, 2000);
    expect(fromBinary(ConfigEntrySchema, again).namespace).toBe("n");
  });

  it("unaryClient: typed calls with the API key and per-call headers; errors as ConnectErrors", async () => {
    const { server, seen } = await start();
    const ch = new GrpcChannel(server.address);
    channels.push(ch);
    const config = unaryClient(ConfigService, ch, { headers: { "x-tenant": "t1" }, apiKey: "k" });
    const entry = await config.getConfig({ namespace: "typed" });
    expect(entry).toMatchObject({ namespace: "typed", author: "fast", revision: 7n });
    await config.getConfig({ namespace: "typed" }, { headers: { "x-tenant": "t2" } });
    expect(seen.map((s) => s.tenant)).toEqual(["t1", "t2"]);
    await expect(config.getConfig({ namespace: "missing" })).rejects.toMatchObject({ code: Code.NotFound });
    // Streaming methods are not part of it.
    expect("watchConfig" in config).toBe(false);
  });
});
