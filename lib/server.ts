import { setMaxListeners } from "node:events";
import * as http from "node:http";
import * as http2 from "node:http2";
import * as net from "node:net";
import { hostname } from "node:os";
import * as tls from "node:tls";
import type { GenFile } from "@bufbuild/protobuf/codegenv2";
import type { DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, createContextValues, type ConnectRouter, type Interceptor, type ServiceImpl } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { Registry } from "prom-client";
import { codeToHttpStatus, codeToString } from "@connectrpc/connect/protocol-connect";
import type { UniversalHandler, UniversalServerRequest, UniversalServerResponse } from "@connectrpc/connect/protocol";
import { errorHeaders, implRoutes, isPlainGrpc, serveFast, type FastObserver, type FastRoutes, type LazyAbort } from "./grpc-fast.js";
import { logRpc, rpcLogger, rpcLogInterceptor } from "./rpc-log.js";
import { file_grpc_health_v1_health, Health } from "../gen/grpc/health/v1/health_pb.js";
import { HealthRegistry, registerHealthService, ServingStatus } from "./health.js";
import type { Logger } from "./logger.js";
import { grpcCodeName, rpcMetrics, rpcMetricsInterceptor } from "./metrics.js";
import { REFLECTION_SERVICE_NAMES, registerReflectionServices } from "./reflection.js";
import { tracingEnabled, tracingInterceptor } from "./tracing.js";
import { authorize, MESH_PEER, SERVICE_TOKEN_HEADER, type AccessPolicy, type MeshSecurity } from "./mesh-security.js";
import type { MeshPeer } from "./mesh-identity.js";

/** A plain HTTP request as either Node server hands it over. */
export type HttpRequest = http.IncomingMessage | http2.Http2ServerRequest;
/** A plain HTTP response of either Node server. */
export type HttpResponse = http.ServerResponse | http2.Http2ServerResponse;

/** Options for {@link startServer}. */
export interface ServerOptions {
  /** Service name (`gateway`, `scheduler`...): used in logs, metrics, and as a health-checked name. */
  name: string;
  /** Interface to bind. @default "127.0.0.1" */
  host?: string;
  /** Port to bind; 0 picks a free port (read it back from {@link RpcServer.port}). */
  port: number;
  /** Registers the service implementations (connect-node ConnectRouter). */
  routes: (router: ConnectRouter) => void;
  /**
   * Generated file descriptors (`GenFile`, e.g. `file_taskmesh_v1_task_service`) of the served
   * services; reflection serves them plus all transitive dependencies, plus health and reflection.
   */
  files: GenFile[];
  /** prom-client registry exposed on `GET /metrics`; RPC metrics are registered in it. */
  registry: Registry;
  /** The process logger; the server logs through a child (`component: "rpc-server"`). */
  logger: Logger;
  /**
   * Handler for plain HTTP requests that are neither RPCs nor `/healthz` / `/metrics` (the
   * gateway mounts REST here). Return true when handled; otherwise the server answers 404.
   */
  httpFallback?: (req: HttpRequest, res: HttpResponse) => boolean;
  /**
   * Runs first for every HTTP request, RPCs included (the gateway answers CORS preflights and adds
   * CORS headers here). Return true when it answered the request itself.
   */
  httpPrelude?: (req: HttpRequest, res: HttpResponse) => boolean;
  /**
   * connect-node interceptors, run inside the server's own tracing, RPC metrics and logging
   * interceptors. A server with interceptors gets no automatic fast path (see `fastUnary`): the
   * fast path could not run them.
   */
  interceptors?: Interceptor[];
  /**
   * Unary gRPC calls (binary protobuf, uncompressed) served straight from the HTTP/2 stream by
   * these handlers instead of connect-node (lib/grpc-fast.ts), by path. Without interceptors,
   * every unary method registered in `routes` is also served this way automatically; these
   * entries take precedence. Off while tracing exports spans (connect's interceptors open them).
   */
  fastUnary?: FastRoutes;
  /** Largest unary request the fast path accepts (bytes). @default 33554432 (32 MiB) */
  maxFastRequestBytes?: number;
  /**
   * The address other services should dial (`host` or `host:port`), registered in etcd; needed
   * when binding to 0.0.0.0 in a container. Without it: the bound address, or `<hostname>:port`
   * when bound to a wildcard address.
   */
  advertiseAddress?: string;
  /**
   * Serve TLS instead of plaintext: HTTP/2 and HTTP/1.1 chosen by ALPN on the same port. With
   * `ca` and `requireClientCert`, clients must present a certificate signed by it (mTLS).
   */
  tls?: { cert: string | Buffer; key: string | Buffer; ca?: string | Buffer; requireClientCert?: boolean };
  /**
   * An internal port of the mesh: callers are authenticated by `security` (a client certificate
   * of the mesh CA, the service token, or loopback when neither is set) and may call only what
   * `access` grants their role; without mTLS or a token the server refuses a non-loopback
   * address. Mutually exclusive with `tls` (mTLS comes from `security`). See docs/security.md.
   */
  mesh?: { security: MeshSecurity; access: AccessPolicy };
  /**
   * How long close() lets open connections finish their calls before destroying them.
   * @default 2000
   */
  shutdownGraceMs?: number;
  /** Bounds on what one client can hold (see {@link ServerLimits}; each field has a default). */
  limits?: Partial<ServerLimits>;
  /**
   * Runs for every request that is not `/healthz` or `/metrics`, before anything of its body is
   * read (HTTP/1, HTTP/2 and the fast gRPC path alike): resolve true to go on, or answer the
   * request with `refuse` (the body is never read, the stream or connection is closed) and
   * resolve false. The gateway authenticates API keys here, so that no one without a key can
   * make it buffer a body.
   */
  admit?: (req: AdmitRequest, refuse: (err: ConnectError) => void) => Promise<boolean>;
  /**
   * How long an idle HTTP/1.1 keep-alive connection is kept open (announced to clients in the
   * `Keep-Alive: timeout=N` header). It must be longer than the idle timeouts of the clients
   * (see {@link DEFAULT_H1_KEEP_ALIVE_MS}).
   * @default 65000
   */
  keepAliveTimeoutMs?: number;
}

/** What {@link ServerOptions.admit} sees of a request: its path, method and headers. */
export interface AdmitRequest {
  readonly path: string;
  readonly method: string;
  readonly headers: http.IncomingHttpHeaders | http2.IncomingHttpHeaders;
}

/**
 * What one client can hold of a server, so that a slow or greedy one cannot exhaust it
 * (docs/security.md): connections, time to send a request, streams per connection.
 */
export interface ServerLimits {
  /** Open connections in all; more are closed at once. @default 10000 */
  maxConnections: number;
  /** Open connections from one IP address; more are closed at once. @default 1000 */
  maxConnectionsPerAddress: number;
  /**
   * Time from a connection's first byte (or a keep-alive connection's next request) to the end of
   * a request's headers, and for a TLS handshake; HTTP/1 gets 408 after it. @default 10000
   */
  headersTimeoutMs: number;
  /** Time to receive a whole request, body included (HTTP/1: 408; HTTP/2: the stream is reset). @default 60000 */
  requestTimeoutMs: number;
  /** An HTTP/2 connection with no stream open for this long is closed (GOAWAY). @default 300000 */
  idleTimeoutMs: number;
  /** Streams an HTTP/2 client may have open at once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS). @default 256 */
  maxConcurrentStreams: number;
}

/** The defaults of {@link ServerLimits}. */
export const DEFAULT_SERVER_LIMITS: Readonly<ServerLimits> = {
  maxConnections: 10_000,
  maxConnectionsPerAddress: 1000,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 60_000,
  idleTimeoutMs: 300_000,
  maxConcurrentStreams: 256,
};

/**
 * The idle timeout of HTTP/1.1 keep-alive connections: 65 s. Node's own default (5 s) equals the
 * idle timeout of Node's HTTP client agent (5 s) and is just above undici's (4 s): a client then
 * reuses an idle connection at the very moment the server closes it, and its request is lost
 * without a response (a reset, "socket hang up"). A connection must be closed by the client, not
 * under its feet: the server waits longer than clients keep idle connections (as proxies do:
 * nginx 75 s, load balancers 60 s). Whoever keeps connections longer still is told the limit.
 */
export const DEFAULT_H1_KEEP_ALIVE_MS = 65_000;

/** A running server returned by {@link startServer}. */
export interface RpcServer {
  /** The bound port. */
  readonly port: number;
  /** `host:port` as clients dial it (`127.0.0.1:8081`; IPv6 hosts in brackets). */
  readonly address: string;
  /**
   * Sets the health status of `""` (overall), of the server's name and of every served service
   * name: SERVING or NOT_SERVING. Health watchers see the change at once; `/healthz` follows.
   */
  setServing(serving: boolean): void;
  /**
   * Stops accepting connections, ends open calls (their handlers' `ctx.signal` aborts with
   * UNAVAILABLE, so streams end at once), sends GOAWAY to HTTP/2 sessions, closes idle HTTP/1
   * connections, destroys whatever is still open after `shutdownGraceMs`, and resolves when
   * everything is closed. Idempotent: later calls return the same promise.
   */
  close(): Promise<void>;
}

/** The client connection preface that opens every HTTP/2 prior-knowledge (h2c) connection. */
const H2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");

/**
 * Starts the RPC server every taskmesh service runs: gRPC, gRPC-Web and Connect (connect-node) on
 * one plaintext port that speaks both HTTP/2 with prior knowledge (grpc clients) and HTTP/1.1
 * (curl, browsers, Connect JSON), plus `grpc.health.v1.Health`, gRPC server reflection (v1 and
 * v1alpha), `GET /healthz` and `GET /metrics`. Health is SERVING once this resolves.
 *
 * The port is shared by looking at each connection's first bytes: the HTTP/2 preface goes to an
 * `http2` server, anything else to an `http` server (an h2c server alone rejects HTTP/1.1, and
 * `allowHTTP1` only works with TLS).
 */
export async function startServer(opts: ServerOptions): Promise<RpcServer> {
  const log = opts.logger.child({ component: "rpc-server", server: opts.name });
  const host = opts.host ?? "127.0.0.1";
  const graceMs = opts.shutdownGraceMs ?? 2000;
  const health = new HealthRegistry();
  const shutdown = new AbortController();
  // connect links every call's signal to this one: one listener per call in flight is expected.
  setMaxListeners(0, shutdown.signal);
  let served: readonly string[] = [];
  // Unary methods of the registered services, for the fast gRPC path (none with interceptors).
  const fast: FastRoutes = new Map();
  const fastInflight = new Set<LazyAbort>();
  // Paths of streaming methods: their requests may go on as long as the call.
  const streamingPaths = new Set<string>();
  let state: "running" | "draining" | "stopped" = "running";
  let closing: Promise<void> | undefined;
  const limits: ServerLimits = { ...DEFAULT_SERVER_LIMITS, ...opts.limits };
  const mesh = opts.mesh;
  if (mesh !== undefined) {
    if (opts.tls !== undefined) throw new Error(`${opts.name}: tls and mesh are exclusive (mesh TLS comes from its security)`);
    mesh.security.assertSafeBind(host, opts.name);
  }
  // The caller of each connection, as its connection tells (certificate or loopback): HTTP/1
  // requests by socket, HTTP/2 streams by session.
  const socketPeers = new WeakMap<object, MeshPeer | undefined>();
  let nextSessionPeer: MeshPeer | undefined;
  const peerOf = (holder: object, token: string | string[] | undefined): MeshPeer | undefined =>
    mesh?.security.peerOfRequest(socketPeers.get(holder), token);
  const requestPeer = (req: HttpRequest): MeshPeer | undefined =>
    peerOf(req instanceof http.IncomingMessage ? req.socket : req.stream.session ?? req.stream, req.headers[SERVICE_TOKEN_HEADER]);

  const rpcHandler = connectNodeAdapter({
    routes(router) {
      opts.routes(opts.interceptors?.length ? router : recordingRouter(router, fast));
      const own = new Set(router.handlers.map((h) => h.service.typeName));
      for (const name of ["", opts.name, ...own]) health.set(name, ServingStatus.SERVING);
      registerHealthService(opts.interceptors?.length ? router : recordingRouter(router, fast), health);
      registerReflectionServices(router, [...opts.files, file_grpc_health_v1_health], () => served);
      served = [...own, Health.typeName, ...REFLECTION_SERVICE_NAMES].sort();
      for (const h of router.handlers) if (h.method.methodKind !== "unary") streamingPaths.add(`/${h.service.typeName}/${h.method.name}`);
      // connect-node reports a request it cannot decode as INTERNAL (500): make it the client's error.
      router.handlers.forEach((h, i) => {
        router.handlers[i] = decodeErrorsAsInvalidArgument(h);
      });
    },
    // Compressing responses costs a lot of CPU on streams of batches for little gain on the
    // networks we run on (gzip cut a stream of batches to a third of its throughput): never
    // compress, and never accept compressed requests.
    acceptCompression: [],
    // Tracing first: metrics, logs and handlers all run inside the call's span.
    interceptors: [
      tracingInterceptor(),
      rpcMetricsInterceptor(opts.registry, opts.name),
      rpcLogInterceptor(log),
      ...(mesh !== undefined ? [accessInterceptor(mesh.access)] : []),
      ...(opts.interceptors ?? []),
    ],
    shutdownSignal: shutdown.signal,
    ...(mesh !== undefined ? { contextValues: (req: HttpRequest) => createContextValues().set(MESH_PEER, requestPeer(req)) } : {}),
    fallback(req, res) {
      // The fallback's response type is connect-node's patched union of both servers' responses.
      const response = res as HttpResponse;
      if (opts.httpFallback?.(req, response) === true) return;
      sendText(response, 404, "application/json", JSON.stringify({ error: "not found" }), req.method === "HEAD");
    },
  });

  // HTTP/1 sockets and their requests in progress: the inner http server never listens, so its
  // own idle-connection tracking is off and close() needs this to drop idle keep-alive sockets.
  const h1Sockets = new Map<net.Socket, number>();
  const trackH1 = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    const socket = req.socket;
    h1Sockets.set(socket, (h1Sockets.get(socket) ?? 0) + 1);
    if (state !== "running") res.shouldKeepAlive = false;
    res.once("close", () => {
      if (!h1Sockets.has(socket)) return; // the socket itself is already closed
      const active = (h1Sockets.get(socket) ?? 1) - 1;
      h1Sockets.set(socket, active);
      if (state !== "running" && active === 0) socket.end();
    });
  };

  /** Runs `admit` on a request, then `go` on if admitted; a failed admission refuses it (UNAVAILABLE). */
  const admitThen = (
    admit: NonNullable<ServerOptions["admit"]>,
    req: AdmitRequest,
    refuse: (err: ConnectError) => void,
    go: () => void,
  ): void => {
    admit(req, refuse).then(
      (ok) => {
        if (ok) go();
        else refuse(new ConnectError("refused", Code.PermissionDenied));
      },
      (err: unknown) => {
        log.warn({ err, path: req.path }, "admission failed");
        refuse(new ConnectError("the request could not be admitted; try again", Code.Unavailable));
      },
    );
  };

  const onRequest = (req: HttpRequest, res: HttpResponse): void => {
    if (req instanceof http.IncomingMessage && res instanceof http.ServerResponse) trackH1(req, res);
    if (opts.httpPrelude?.(req, res) === true) return;
    const path = (req.url ?? "/").split("?", 1)[0];
    if ((req.method === "GET" || req.method === "HEAD") && (path === "/healthz" || path === "/metrics")) {
      const head = req.method === "HEAD";
      const denied = path === "/metrics" && mesh !== undefined ? authorize(mesh.access, path, requestPeer(req)) : undefined;
      if (denied !== undefined) {
        sendText(res, denied.code === Code.Unauthenticated ? 401 : 403, "text/plain", `${denied.rawMessage}\n`, head);
      } else if (path === "/healthz") {
        const serving = health.get("") === ServingStatus.SERVING;
        const body = JSON.stringify({ status: serving ? "SERVING" : "NOT_SERVING" });
        sendText(res, serving ? 200 : 503, "application/json", body, head);
      } else {
        opts.registry.metrics().then(
          (text) => sendText(res, 200, opts.registry.contentType, text, head),
          (err: unknown) => {
            log.error({ err }, "metrics collection failed");
            sendText(res, 500, "text/plain", "metrics collection failed\n", head);
          },
        );
      }
      return;
    }
    // connect-node's handler takes either server's request/response pair.
    const go = (): void => {
      // A Connect GET whose message is not base64 is the client's error (connect-node: 500).
      const bad = req.method === "GET" ? badConnectGet(req.url ?? "") : undefined;
      if (bad !== undefined) {
        const r = refusal(path ?? "/", "application/json", bad);
        (res as http.ServerResponse).writeHead(r.status, r.headers);
        (res as http.ServerResponse).end(r.body);
        return;
      }
      rpcHandler(req, res as Parameters<typeof rpcHandler>[1]);
    };
    if (opts.admit === undefined) return go();
    const refuse = (err: ConnectError): void => {
      if (res.headersSent) return;
      const r = refusal(path ?? "/", req.headers["content-type"], err);
      // The body is not read: an HTTP/1 connection closes after the answer, an HTTP/2 stream is
      // closed (RST_STREAM NO_ERROR: "stop sending").
      if (res instanceof http.ServerResponse) res.shouldKeepAlive = false;
      (res as http.ServerResponse).writeHead(r.status, r.headers);
      (res as http.ServerResponse).end(r.body);
      if (!(req instanceof http.IncomingMessage)) {
        const stream = req.stream;
        res.once("finish", () => {
          if (!stream.closed) stream.close(http2.constants.NGHTTP2_NO_ERROR);
        });
      }
    };
    admitThen(opts.admit, { path: path ?? "/", method: req.method ?? "GET", headers: req.headers }, refuse, go);
  };

  for (const [path, handler] of opts.fastUnary ?? []) fast.set(path, handler);
  const fastOptions = {
    maxRequestBytes: opts.maxFastRequestBytes ?? 32 * 1024 * 1024,
    observer: fastObserver(opts.registry, opts.name, rpcLogger(log)),
    inflight: fastInflight,
  };

  const h1 = http.createServer(onRequest);
  // Applies to the sockets we hand over too: set when a response finishes, cleared by the next request.
  h1.keepAliveTimeout = opts.keepAliveTimeoutMs ?? DEFAULT_H1_KEEP_ALIVE_MS;
  // Headers and whole-request deadlines (408). Node checks them on a timer it starts when the
  // server starts listening; this one never listens (we hand it sockets), so start it by telling
  // it that it is listening: that only starts the checks (Node 20–24: setupConnectionsTracking).
  h1.headersTimeout = limits.headersTimeoutMs;
  h1.requestTimeout = limits.requestTimeoutMs;
  // (connectionsCheckingInterval is read when the checks start; @types/node has it as a
  // createServer option only.)
  Object.assign(h1, { connectionsCheckingInterval: Math.min(1000, limits.headersTimeoutMs) });
  h1.emit("listening");
  // A client that shuts its side down (FIN) after sending its request still gets the answer, and
  // the connection ends after it (Node would abort the request). Except a response already
  // streaming (its head sent, not finished: REST watches, server streams): a client that stops
  // sending while it reads a stream is taken to have left, as a closed socket would be, so the
  // call is cancelled (a stream whose head comes later: halfClosedLeft in
  // services/gateway/rest/transcoder.ts).
  Object.assign(h1, { httpAllowHalfOpen: true });
  // The response in progress on each HTTP/1 connection (one at a time: no pipelining here).
  const h1Responses = new WeakMap<net.Socket, http.ServerResponse>();
  h1.on("request", (req: http.IncomingMessage, res: http.ServerResponse) => {
    const socket = req.socket;
    const watched = h1Responses.has(socket);
    h1Responses.set(socket, res);
    if (watched) return;
    socket.once("end", () => {
      const current = h1Responses.get(socket);
      if (current !== undefined && current.headersSent && !current.writableFinished) socket.destroy();
    });
  });
  h1.on("clientError", (err: NodeJS.ErrnoException, socket: net.Socket) => {
    log.debug({ err }, "http/1 client error");
    // As Node would answer, when nothing of a response has gone out yet: 408 for a request not
    // sent in time (headers or body), 400 for one that does not parse.
    const inFlight = (socket as net.Socket & { _httpMessage?: http.ServerResponse | null })._httpMessage;
    if (socket.writable && (inFlight === undefined || inFlight === null || !inFlight.headersSent)) {
      const timeout = err.code === "ERR_HTTP_REQUEST_TIMEOUT";
      socket.end(timeout ? "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n" : "HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
    }
    socket.destroySoon();
  });
  const h2 = http2.createServer({ settings: { maxConcurrentStreams: limits.maxConcurrentStreams } }, onRequest);
  const sessions = new Set<http2.ServerHttp2Session>();
  // Open streams by session, and the timer that closes a session without any.
  const sessionStreams = new Map<http2.ServerHttp2Session, { open: number; idle: NodeJS.Timeout | undefined }>();
  const armIdle = (session: http2.ServerHttp2Session): void => {
    const st = sessionStreams.get(session);
    if (st === undefined || st.open > 0) return;
    st.idle = setTimeout(() => {
      if (!session.closed && !session.destroyed) session.close();
    }, limits.idleTimeoutMs);
    st.idle.unref();
  };
  h2.on("session", (session) => {
    socketPeers.set(session, nextSessionPeer);
    sessions.add(session);
    sessionStreams.set(session, { open: 0, idle: undefined });
    session.once("close", () => {
      sessions.delete(session);
      clearTimeout(sessionStreams.get(session)?.idle);
      sessionStreams.delete(session);
    });
    armIdle(session);
    // A session accepted while closing must not live on.
    if (state !== "running") session.close();
  });
  h2.on("sessionError", (err) => log.debug({ err }, "http/2 session error"));
  {
    // Every stream passes here first: it counts against its session's idleness, gets its
    // deadline for the request, is admitted (before any of its body is read), and then unary
    // gRPC calls with a fast route are served straight from the stream; everything else goes on
    // to Node's compatibility layer (request and response objects for connect-node).
    const compat = h2.listeners("stream");
    const toCompat = compat[0];
    if (compat.length !== 1 || toCompat === undefined) throw new Error("unexpected http2 server listeners");
    h2.removeAllListeners("stream");
    h2.on("stream", (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, flags: number, rawHeaders: string[]) => {
      // A stream can fail (the client resets it, the connection breaks) before anyone else
      // listens — while its admission is awaited, say: without a listener that error would be
      // uncaught and end the process. Whoever serves it reports failures its own way.
      stream.on("error", () => undefined);
      const path = (headers[":path"] ?? "").split("?", 1)[0] ?? "";
      // (A closed stream no longer knows its session: keep it.)
      const session = stream.session as http2.ServerHttp2Session;
      const st = sessionStreams.get(session);
      if (st !== undefined) {
        st.open++;
        clearTimeout(st.idle);
        st.idle = undefined;
        stream.once("close", () => {
          st.open--;
          armIdle(session);
        });
      }
      // A request must arrive whole in time, unless it has no body or is a stream of messages
      // (bidi, client streaming). "Whole" is when its reader has read its end.
      if (!stream.endAfterHeaders && !streamingPaths.has(path)) {
        const deadline = setTimeout(() => {
          if (!stream.closed) stream.close(http2.constants.NGHTTP2_CANCEL);
        }, limits.requestTimeoutMs);
        deadline.unref();
        stream.once("end", () => clearTimeout(deadline));
        stream.once("close", () => clearTimeout(deadline));
      }
      const handler = state === "running" && isPlainGrpc(headers) && !tracingEnabled() ? fast.get(path) : undefined;
      const peer = mesh !== undefined && handler !== undefined ? peerOf(stream.session ?? stream, headers[SERVICE_TOKEN_HEADER]) : undefined;
      // A call its caller may not make goes the slow way: connect-node answers it with the error.
      const allowed = mesh === undefined || authorize(mesh.access, path, peer) === undefined;
      // Everything but the fast path is admitted on the way through onRequest (after the
      // prelude: CORS headers on refusals too).
      if (handler === undefined || !allowed) return toCompat.call(h2, stream, headers, flags, rawHeaders);
      const go = (): void => {
        if (!stream.closed && !stream.destroyed) serveFast(stream, headers, handler, fastOptions, peer);
      };
      if (opts.admit === undefined) return go();
      const refuse = (err: ConnectError): void => {
        if (stream.headersSent || stream.closed || stream.destroyed) return;
        const r = refusal(path, headers["content-type"], err);
        stream.respond({ ":status": r.status, ...r.headers }, { endStream: r.body === undefined });
        if (r.body !== undefined) stream.end(r.body);
        // The body is never read: tell the client to stop sending it (RST_STREAM NO_ERROR, sent
        // once the answer is out).
        setImmediate(() => {
          if (!stream.closed) stream.close(http2.constants.NGHTTP2_NO_ERROR);
        });
      };
      admitThen(opts.admit, { path, method: headers[":method"] ?? "GET", headers }, refuse, go);
    });
  }

  const sockets = new Set<net.Socket>();
  const h2Sockets = new Set<net.Socket>();
  let onDrained: (() => void) | undefined;
  // Connections by remote address, and in all: beyond the limits a new one is closed at once
  // (counted from the TCP accept, before any TLS handshake).
  const perAddress = new Map<string, number>();
  let connections = 0;
  let lastRefusalLog = 0;
  const admitConnection = (socket: net.Socket): void => {
    const address = socket.remoteAddress ?? "";
    const fromAddress = perAddress.get(address) ?? 0;
    if (connections >= limits.maxConnections || fromAddress >= limits.maxConnectionsPerAddress) {
      socket.destroy();
      const now = Date.now();
      if (now - lastRefusalLog > 10_000) {
        lastRefusalLog = now;
        log.warn({ address, fromAddress, connections, limits: { total: limits.maxConnections, perAddress: limits.maxConnectionsPerAddress } }, "connection limit reached; closing new connections");
      }
      return;
    }
    connections++;
    perAddress.set(address, fromAddress + 1);
    socket.once("close", () => {
      connections--;
      const n = (perAddress.get(address) ?? 1) - 1;
      if (n <= 0) perAddress.delete(address);
      else perAddress.set(address, n);
    });
  };
  // HTTP/2 connections end when the client ends its side (HTTP/2 clients never half-close to
  // wait for answers; the listener is half-open for HTTP/1's sake).
  const endWithPeer = (socket: net.Socket): void => {
    socket.once("end", () => {
      if (!socket.destroyed) socket.end();
    });
  };
  const onSocket = (socket: net.Socket, alpn?: string | false): void => {
    if (socket.destroyed) return;
    // Our own listener hands sockets to the HTTP servers, so it must do what they would: turn
    // Nagle's algorithm off. With it on, small frames wait for delayed ACKs (tens of ms a call).
    socket.setNoDelay(true);
    sockets.add(socket);
    const peer = mesh?.security.peerOfSocket(socket);
    socketPeers.set(socket, peer);
    socket.once("close", () => {
      sockets.delete(socket);
      h1Sockets.delete(socket);
      h2Sockets.delete(socket);
      if (sockets.size === 0) onDrained?.();
    });
    if (state !== "running") {
      socket.destroy();
      return;
    }
    if (alpn !== undefined) {
      // TLS: the protocol was negotiated by ALPN (no ALPN at all means HTTP/1.1).
      if (alpn === "h2") {
        h2Sockets.add(socket);
        nextSessionPeer = peer;
        endWithPeer(socket);
        h2.emit("connection", socket);
      } else {
        h1Sockets.set(socket, 0);
        h1.emit("connection", socket);
      }
      return;
    }
    dispatchConnection(socket, limits.headersTimeoutMs, {
      h1: () => {
        h1Sockets.set(socket, 0);
        h1.emit("connection", socket);
      },
      h2: () => {
        h2Sockets.add(socket);
        nextSessionPeer = peer;
        endWithPeer(socket);
        h2.emit("connection", socket);
      },
      error: (err) => log.debug({ err }, "connection failed before protocol detection"),
    });
  };
  const tlsOpts: tls.TlsOptions | undefined =
    mesh?.security.tls === true
      ? mesh.security.serverTlsOptions()
      : opts.tls === undefined
        ? undefined
        : {
            cert: opts.tls.cert,
            key: opts.tls.key,
            ...(opts.tls.ca !== undefined ? { ca: opts.tls.ca } : {}),
            requestCert: opts.tls.requireClientCert === true,
            rejectUnauthorized: opts.tls.requireClientCert === true,
          };
  let unwatchCerts: (() => void) | undefined;
  const listener: net.Server =
    tlsOpts === undefined
      ? // Half-open as Node's own HTTP server is (see httpAllowHalfOpen above).
        net.createServer({ allowHalfOpen: true }, (socket) => onSocket(socket))
      : tls.createServer({ ...tlsOpts, allowHalfOpen: true, ALPNProtocols: ["h2", "http/1.1"], handshakeTimeout: limits.headersTimeoutMs }, (socket) =>
          onSocket(socket, socket.alpnProtocol ?? false),
        );
  // First, before the server's own handling of the connection.
  listener.prependListener("connection", admitConnection);
  if (tlsOpts !== undefined) {
    listener.on("tlsClientError", (err) => log.debug({ err }, "tls handshake failed"));
  }
  if (mesh?.security.tls === true && listener instanceof tls.Server) {
    // New connections get the new certificate; open ones keep theirs until they close.
    const tlsListener = listener;
    unwatchCerts = mesh.security.onReload(() => tlsListener.setSecureContext(mesh.security.serverTlsOptions()));
  }
  listener.on("error", (err) => log.error({ err }, "listener error"));

  await new Promise<void>((resolve, reject) => {
    listener.once("error", reject);
    listener.listen(opts.port, host, () => {
      listener.off("error", reject);
      resolve();
    });
  });
  const bound = listener.address();
  if (bound === null || typeof bound === "string") throw new Error("server bound to no TCP address");
  const port = bound.port;
  const wildcard = host === "0.0.0.0" || host === "::" || host === "";
  const advertised = opts.advertiseAddress ?? "";
  const address =
    advertised !== ""
      ? /:\d+$/.test(advertised) && !advertised.endsWith("]")
        ? advertised
        : `${advertised}:${port}`
      : wildcard
        ? `${hostname()}:${port}`
        : `${host.includes(":") ? `[${host}]` : host}:${port}`;
  log.info({ address }, "server listening");

  const close = async (): Promise<void> => {
    state = "draining";
    unwatchCerts?.();
    log.debug({ address }, "server closing");
    const listenerClosed = new Promise<void>((resolve) => listener.close(() => resolve()));
    shutdown.abort(new ConnectError("server shutting down", Code.Unavailable));
    for (const call of fastInflight) call.abort(new ConnectError("server shutting down", Code.Unavailable));
    health.setAll(false);
    for (const session of sessions) session.close();
    for (const [socket, active] of h1Sockets) if (active === 0) socket.destroy();
    // Sockets still being sniffed have sent nothing worth waiting for.
    for (const socket of sockets) if (!h1Sockets.has(socket) && !h2Sockets.has(socket)) socket.destroy();
    // Neither inner server listens, but close() clears their internal state.
    h1.close();
    h2.close();
    // Connections still open get the grace period to finish their calls, then are destroyed.
    if (sockets.size > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        new Promise<void>((resolve) => {
          onDrained = resolve;
        }),
        new Promise<void>((resolve) => {
          timer = setTimeout(resolve, graceMs).unref();
        }),
      ]);
      clearTimeout(timer);
    }
    for (const session of sessions) session.destroy();
    for (const socket of sockets) socket.destroy();
    await listenerClosed;
    state = "stopped";
    log.info({ address }, "server closed");
  };

  return {
    port,
    address,
    setServing(serving) {
      health.setAll(serving);
    },
    close() {
      closing ??= close();
      return closing;
    },
  };
}

/**
 * A router that also records the unary methods of every service registered on it as fast
 * routes (they run the same implementation).
 */
function recordingRouter(router: ConnectRouter, fast: FastRoutes): ConnectRouter {
  const recording: ConnectRouter = {
    get handlers() {
      return router.handlers;
    },
    service(service, impl, options) {
      implRoutes(service as DescService, impl as Partial<ServiceImpl<DescService>>, fast);
      router.service(service, impl, options);
      return recording;
    },
    rpc(method, impl, options) {
      router.rpc(method, impl, options);
      return recording;
    },
  };
  return recording;
}

/**
 * RPC metrics and logs of fast calls: the same series as rpcMetricsInterceptor and the same
 * lines as rpcLogInterceptor, with the labelled children looked up once per method.
 */
function fastObserver(registry: Registry, service: string, log: Logger): FastObserver {
  const metrics = rpcMetrics(registry);
  const byPath = new Map<
    string,
    {
      method: string;
      duration: ReturnType<typeof metrics.duration.labels>;
      inFlight: ReturnType<typeof metrics.inFlight.labels>;
      requests: Map<Code | 0, ReturnType<typeof metrics.requests.labels>>;
    }
  >();
  return {
    start(path) {
      let m = byPath.get(path);
      if (m === undefined) {
        const method = path.slice(1);
        m = {
          method,
          duration: metrics.duration.labels({ service, method }),
          inFlight: metrics.inFlight.labels({ service, method }),
          requests: new Map(),
        };
        byPath.set(path, m);
      }
      const started = performance.now();
      const entry = m;
      entry.inFlight.inc();
      return (code, err) => {
        entry.inFlight.dec();
        entry.duration.observe((performance.now() - started) / 1000);
        let counter = entry.requests.get(code);
        if (counter === undefined) {
          counter = metrics.requests.labels({ service, method: entry.method, code: grpcCodeName(code) });
          entry.requests.set(code, counter);
        }
        counter.inc();
        logRpc(log, entry.method, started, code === 0 ? undefined : (err ?? new ConnectError("", code)));
      };
    },
  };
}

/** base64 or base64url, padded or not. */
const BASE64 = /^[A-Za-z0-9+/_-]*={0,2}$/;

/** INVALID_ARGUMENT for a Connect GET (`?message=…&base64=1`) whose message is not base64. */
function badConnectGet(url: string): ConnectError | undefined {
  const q = url.indexOf("?");
  if (q < 0) return undefined;
  const params = new URLSearchParams(url.slice(q + 1));
  const message = params.get("message");
  if (message === null || params.get("base64") !== "1") return undefined;
  if (BASE64.test(message) && message.replace(/=+$/, "").length % 4 !== 1) return undefined;
  return new ConnectError("message: not base64 (base64=1)", Code.InvalidArgument);
}

/** What connect-node says of a request message it cannot decode (protobuf binary). */
const DECODE_FAILURE = /^parse binary: /;

/**
 * A handler whose answers to undecodable requests say INVALID_ARGUMENT (HTTP 400) where
 * connect-node says INTERNAL (500): bytes that are no valid message (garbage, a wrong wire type,
 * a varint that overflows, invalid UTF-8, nesting too deep) are the client's error, and must not
 * be logged or counted as ours. Connect unary errors are JSON bodies; gRPC and gRPC-Web ones
 * come as headers (trailers-only: no message precedes a request that could not be decoded).
 */
function decodeErrorsAsInvalidArgument(handler: UniversalHandler): UniversalHandler {
  const wrapped = async (req: UniversalServerRequest): Promise<UniversalServerResponse> => {
    const res = await handler(req);
    for (const h of [res.trailer, res.header]) {
      if (h?.get("grpc-status") === String(Code.Internal) && DECODE_FAILURE.test(decodeURIComponent(h.get("grpc-message") ?? ""))) {
        h.set("grpc-status", String(Code.InvalidArgument));
      }
    }
    if (res.status === 500 && res.body !== undefined && res.header?.get("content-type")?.startsWith("application/json") === true) {
      const chunks: Uint8Array[] = [];
      for await (const c of res.body) chunks.push(c);
      const text = Buffer.concat(chunks).toString("utf8");
      let parsed: { code?: unknown; message?: unknown } | undefined;
      try {
        parsed = JSON.parse(text) as { code?: unknown; message?: unknown };
      } catch {
        parsed = undefined;
      }
      const decodeFailure = parsed?.code === "internal" && typeof parsed.message === "string" && DECODE_FAILURE.test(parsed.message);
      const body = decodeFailure ? JSON.stringify({ ...parsed, code: "invalid_argument" }) : text;
      // The body changed length: say its new one.
      res.header.set("content-length", String(Buffer.byteLength(body)));
      return {
        ...res,
        status: decodeFailure ? 400 : res.status,
        body: (async function* () {
          yield new TextEncoder().encode(body);
        })(),
      };
    }
    return res;
  };
  return Object.assign(wrapped, {
    protocolNames: handler.protocolNames,
    service: handler.service,
    method: handler.method,
    requestPath: handler.requestPath,
    supportedContentType: handler.supportedContentType,
    allowedMethods: handler.allowedMethods,
  }) as UniversalHandler;
}

/** Refuses calls that the caller's role may not make (see AccessPolicy). */
function accessInterceptor(access: AccessPolicy): Interceptor {
  return (next) => (req) => {
    const denied = authorize(access, `/${req.service.typeName}/${req.method.name}`, req.contextValues.get(MESH_PEER));
    if (denied !== undefined) throw denied;
    return next(req);
  };
}

/** Where {@link dispatchConnection} sends a connection once its protocol is known. */
interface ProtocolTargets {
  /** Hand the socket to the HTTP/1 server (which never resumes a paused socket: we do after). */
  h1(): void;
  /** Hand the socket to the HTTP/2 server (the session reads the buffered bytes itself). */
  h2(): void;
  /** The socket failed before its protocol was known (it is destroyed). */
  error(err: Error): void;
}

/**
 * Reads a new connection's first bytes until they match or diverge from the HTTP/2 preface, then
 * puts them back and hands the paused socket over. For h2 the socket must stay paused (resuming
 * breaks the session's framing); for HTTP/1 it must be resumed.
 */
function dispatchConnection(socket: net.Socket, timeoutMs: number, to: ProtocolTargets): void {
  let buffered = Buffer.alloc(0);
  const fail = (err: Error): void => {
    to.error(err);
    socket.destroy();
  };
  const onTimeout = (): void => fail(new Error("no request within the protocol detection timeout"));
  const onEnd = (): void => fail(new Error("closed before a request"));
  const onData = (chunk: Buffer): void => {
    buffered = Buffer.concat([buffered, chunk]);
    const n = Math.min(buffered.length, H2_PREFACE.length);
    const isH2 = buffered.subarray(0, n).equals(H2_PREFACE.subarray(0, n));
    if (isH2 && buffered.length < H2_PREFACE.length) return;
    socket.off("data", onData);
    socket.off("error", fail);
    socket.off("timeout", onTimeout);
    socket.off("end", onEnd);
    socket.setTimeout(0);
    socket.pause();
    socket.unshift(buffered);
    if (isH2) {
      to.h2();
    } else {
      to.h1();
      socket.resume();
    }
  };
  socket.on("data", onData);
  socket.on("error", fail);
  socket.once("end", onEnd);
  socket.setTimeout(timeoutMs, onTimeout);
}

/**
 * The answer to a request refused before its body was read, in its protocol: gRPC and gRPC-Web
 * get a trailers-only response with the status; Connect (an RPC path) its JSON error with the
 * HTTP status of the code; anything else (REST) a google.rpc.Status JSON body.
 */
function refusal(
  path: string,
  contentType: string | undefined,
  err: ConnectError,
): { status: number; headers: http.OutgoingHttpHeaders; body: string | undefined } {
  const ct = contentType ?? "";
  if (ct.startsWith("application/grpc")) {
    return { status: 200, headers: { "content-type": ct.split(";", 1)[0] ?? ct, ...errorHeaders(err) }, body: undefined };
  }
  const status = codeToHttpStatus(err.code);
  const rpc = /^\/[\w.]+\/\w+$/.test(path);
  const body = rpc
    ? JSON.stringify({ code: codeToString(err.code), message: err.rawMessage })
    : JSON.stringify({ code: err.code, message: err.rawMessage, details: [] });
  const headers: http.OutgoingHttpHeaders = { "content-type": "application/json", "content-length": Buffer.byteLength(body) };
  const retryAfter = err.metadata.get("retry-after");
  if (retryAfter !== null) headers["retry-after"] = retryAfter;
  return { status, headers, body };
}

/** Writes a complete small response (the body is left out for HEAD). */
function sendText(res: HttpResponse, status: number, contentType: string, body: string, head: boolean): void {
  // Both response types have these methods; only their overload lists differ.
  const r = res as http.ServerResponse;
  r.writeHead(status, { "content-type": contentType, "content-length": Buffer.byteLength(body) });
  r.end(head ? undefined : body);
}
