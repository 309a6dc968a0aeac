/**
 * A lean unary gRPC client over one HTTP/2 connection (binary protobuf, no compression): the
 * counterpart of lib/grpc-fast.ts, for hops that forward bytes they need not decode (the
 * gateway's calls to the scheduler). One connection per channel, opened on first use and again
 * after it fails; every call has a deadline.
 *
 * A peer that is there but silent (a stopped or wedged process: the kernel still completes TCP
 * connects to its listening socket) is found in bounded time: a new connection must bring the
 * peer's HTTP/2 SETTINGS within `connectTimeoutMs`, and no request is written before they came,
 * so a call that fails while connecting was surely not sent; an open connection is pinged every
 * `pingIntervalMs` and dropped when a ping goes unanswered for `pingTimeoutMs`, failing its calls.
 * Every failure says what happened ({@link ChannelFailure} as the ConnectError's cause).
 */
import * as http2 from "node:http2";
import type { Socket } from "node:net";
import { Code, ConnectError } from "@connectrpc/connect";
import { findTrailerError } from "@connectrpc/connect/protocol-grpc";
import { frame, unframe, webHeaders } from "./grpc-fast.js";
import type { MeshRole } from "./mesh-identity.js";
import type { MeshSecurity } from "./mesh-security.js";

/** Options for {@link GrpcChannel}. */
export interface GrpcChannelOptions {
  /**
   * Ping the connection this often; a ping unanswered for `pingTimeoutMs` closes it and fails its
   * calls. With the defaults a silent peer is found within 2 s.
   * @default 1000
   */
  pingIntervalMs?: number;
  /** How long a ping may go unanswered. @default 1000 */
  pingTimeoutMs?: number;
  /**
   * How long a new connection may take to bring the peer's HTTP/2 SETTINGS; calls wait for them
   * (unsent) meanwhile, and fail with UNAVAILABLE after this long.
   * @default 1000
   */
  connectTimeoutMs?: number;
  /**
   * The mesh credentials to dial with (lib/mesh-security.ts): mTLS (the peer must present a
   * certificate of one of `peerRoles`) and/or the service token. Plaintext without.
   */
  security?: MeshSecurity;
  /** Roles the peer's certificate may have (mTLS). @default ["scheduler"] */
  peerRoles?: readonly MeshRole[];
}

/**
 * What went wrong with a call at the connection level, attached as the `cause` of the
 * ConnectError a call fails with (a status sent by the server has none):
 * - `refused`: the connection could not be made (refused, unreachable, reset while connecting);
 * - `connect-timeout`: connected, but the peer sent no HTTP/2 SETTINGS in time (a silent peer);
 * - `ping-timeout`: an open connection stopped answering pings (a silent peer);
 * - `lost`: the connection or stream broke (the peer died, reset it, or went away);
 * - `deadline`: the call's own deadline passed without an answer;
 * - `closed`: the channel was closed.
 * `sent` is false when the request surely never left this process (it waited for the connection).
 */
export class ChannelFailure extends Error {
  constructor(
    readonly kind: "refused" | "connect-timeout" | "ping-timeout" | "lost" | "deadline" | "closed",
    message: string,
    readonly sent: boolean,
    cause?: unknown,
  ) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "ChannelFailure";
  }
}

/** Node error codes of a connection that could not be made. */
const CONNECT_CODES = new Set(["ECONNREFUSED", "EHOSTUNREACH", "ENETUNREACH", "ENOTFOUND", "EAI_AGAIN", "EADDRNOTAVAIL"]);

/** One connection and the calls waiting for it to become usable. */
interface Conn {
  session: http2.ClientHttp2Session;
  /** True once the peer's SETTINGS arrived: requests may be written. */
  ready: boolean;
  /** Why the connection failed, once it did. */
  failure: ChannelFailure | undefined;
  /** Calls waiting for `ready`: called with undefined when it is, or with the failure. */
  waiting: ((failure: ChannelFailure | undefined) => void)[];
}

function failureError(f: ChannelFailure): ConnectError {
  const code = f.kind === "deadline" ? Code.DeadlineExceeded : Code.Unavailable;
  return new ConnectError(f.message, code, undefined, undefined, f);
}

/** One HTTP/2 connection to `address` (`host:port`) for unary gRPC calls. */
export class GrpcChannel {
  private conn: Conn | undefined;
  private pinger: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly pingIntervalMs: number;
  private readonly pingTimeoutMs: number;
  private readonly connectTimeoutMs: number;
  private readonly url: string;
  private readonly connectOptions: http2.SecureClientSessionOptions;
  private readonly extraHeaders: Record<string, string>;

  constructor(
    readonly address: string,
    opts: GrpcChannelOptions = {},
  ) {
    this.pingIntervalMs = opts.pingIntervalMs ?? 1000;
    this.pingTimeoutMs = opts.pingTimeoutMs ?? 1000;
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 1000;
    this.url = opts.security?.url(address) ?? `http://${address}`;
    this.connectOptions = opts.security?.clientOptions(opts.peerRoles ?? ["scheduler"]) ?? {};
    this.extraHeaders = opts.security?.headers() ?? {};
  }

  /** The current connection, or a new one. */
  private connection(): Conn {
    const c = this.conn;
    if (c !== undefined && c.failure === undefined && !c.session.closed && !c.session.destroyed) return c;
    const session = http2.connect(this.url, this.connectOptions);
    const conn: Conn = { session, ready: false, failure: undefined, waiting: [] };
    const settle = (failure: ChannelFailure | undefined): void => {
      const waiting = conn.waiting;
      conn.waiting = [];
      for (const w of waiting) w(failure);
    };
    const fail = (failure: ChannelFailure): void => {
      if (conn.failure !== undefined) return;
      conn.failure = failure;
      clearTimeout(connectTimer);
      if (this.conn === conn) this.conn = undefined;
      settle(failure);
      if (!session.destroyed) session.destroy();
    };
    const connectTimer = setTimeout(
      () => fail(new ChannelFailure("connect-timeout", `${this.address} sent no HTTP/2 settings in ${this.connectTimeoutMs} ms`, false)),
      this.connectTimeoutMs,
    );
    connectTimer.unref();
    session.once("remoteSettings", () => {
      clearTimeout(connectTimer);
      if (conn.failure !== undefined) return;
      conn.ready = true;
      settle(undefined);
    });
    session.on("error", (err: NodeJS.ErrnoException) => {
      const refused = !conn.ready && (CONNECT_CODES.has(err.code ?? "") || err.code === "ECONNRESET");
      fail(new ChannelFailure(refused ? "refused" : "lost", `connection to ${this.address} failed: ${err.message}`, false, err));
    });
    session.once("goaway", () => {
      // No new calls on it; the ones in flight finish (or fail) on their own.
      if (this.conn === conn) this.conn = undefined;
    });
    session.once("close", () => fail(new ChannelFailure(conn.ready ? "lost" : "refused", `connection to ${this.address} closed`, false)));
    session.once("connect", (_s: http2.ClientHttp2Session, socket: Socket) => socket.setNoDelay(true));
    session.unref();
    this.conn = conn;
    this.startPinging();
    return conn;
  }

  private startPinging(): void {
    if (this.pinger !== undefined) return;
    this.pinger = setInterval(() => {
      const c = this.conn;
      if (c === undefined || !c.ready || c.failure !== undefined || c.session.destroyed) return;
      const s = c.session;
      const lost = (why: string): void => {
        if (c.failure !== undefined) return;
        c.failure = new ChannelFailure("ping-timeout", `${this.address} ${why}`, true);
        if (this.conn === c) this.conn = undefined;
        s.destroy();
      };
      const deadline = setTimeout(() => lost(`did not answer a ping in ${this.pingTimeoutMs} ms`), this.pingTimeoutMs);
      deadline.unref();
      try {
        s.ping((err) => {
          clearTimeout(deadline);
          if (err !== null && !s.destroyed) lost(`ping failed: ${err.message}`);
        });
      } catch (err) {
        clearTimeout(deadline);
        lost(`ping failed: ${err instanceof Error ? err.message : String(err)}`);
      }
    }, this.pingIntervalMs);
    this.pinger.unref();
  }

  /**
   * Calls `path` (`/package.Service/Method`) with the encoded request `message` and `headers`;
   * resolves with the encoded response message. Fails with the server's status as a
   * ConnectError (details kept as received, trailers as metadata); UNAVAILABLE when the
   * connection fails or a silent peer is found; DEADLINE_EXCEEDED after `timeoutMs`; CANCELED
   * when `signal` aborts. Failures that are not the server's status carry a {@link ChannelFailure}
   * as `cause`.
   */
  unary(
    path: string,
    message: Uint8Array,
    headers: Record<string, string>,
    timeoutMs: number,
    signal?: AbortSignal,
  ): Promise<Uint8Array> {
    if (this.closed) return Promise.reject(failureError(new ChannelFailure("closed", "channel closed", false)));
    if (signal?.aborted === true) return Promise.reject(ConnectError.from(signal.reason, Code.Canceled));
    return new Promise<Uint8Array>((resolve, reject) => {
      const started = performance.now();
      let conn: Conn;
      try {
        conn = this.connection();
      } catch (err) {
        reject(failureError(new ChannelFailure("refused", `connection to ${this.address} failed: ${String(err)}`, false, err)));
        return;
      }
      let req: http2.ClientHttp2Stream | undefined;
      let settled = false;
      let status: http2.IncomingHttpHeaders | undefined;
      let responseHeaders: http2.IncomingHttpHeaders | undefined;
      const chunks: Buffer[] = [];
      const settle = (err: ConnectError | undefined, value?: Uint8Array): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        if (err !== undefined) {
          if (req !== undefined && !req.closed) req.close(http2.constants.NGHTTP2_CANCEL);
          reject(err);
        } else resolve(value as Uint8Array);
      };
      const onAbort = (): void => settle(ConnectError.from(signal?.reason, Code.Canceled));
      signal?.addEventListener("abort", onAbort, { once: true });
      const timer = setTimeout(
        () =>
          settle(
            failureError(new ChannelFailure("deadline", `${path} on ${this.address}: no answer in ${timeoutMs} ms`, req !== undefined)),
          ),
        timeoutMs,
      );
      const send = (): void => {
        if (settled) return;
        const session = conn.session;
        try {
          req = session.request({
            ...headers,
            ...this.extraHeaders,
            ":method": "POST",
            ":path": path,
            "content-type": "application/grpc+proto",
            te: "trailers",
            "grpc-timeout": `${Math.max(1, Math.ceil(timeoutMs - (performance.now() - started)))}m`,
          });
        } catch (err) {
          settle(failureError(new ChannelFailure("lost", `connection to ${this.address} failed: ${String(err)}`, false, err)));
          return;
        }
        const stream = req;
        stream.on("response", (h) => {
          responseHeaders = h;
          if (h["grpc-status"] !== undefined) status = h; // trailers-only
        });
        stream.on("trailers", (t) => {
          status = t;
        });
        stream.on("data", (c: Buffer) => chunks.push(c));
        stream.on("error", (err) => settle(failureError(this.lostFailure(conn, err))));
        stream.on("close", () => {
          if (settled) return;
          const httpStatus = responseHeaders === undefined ? undefined : Number(responseHeaders[":status"]);
          if (status === undefined) {
            if (httpStatus !== undefined && httpStatus !== 200) {
              settle(new ConnectError(`${path} on ${this.address}: HTTP ${httpStatus}`, Code.Unknown));
            } else settle(failureError(this.lostFailure(conn, undefined)));
            return;
          }
          const err = findTrailerError(webHeaders(status));
          if (err !== undefined) {
            settle(err);
            return;
          }
          const body = chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks);
          const msg = unframe(body, "response");
          if (msg instanceof ConnectError) settle(new ConnectError(msg.rawMessage, Code.Internal));
          else settle(undefined, msg);
        });
        stream.end(frame(message));
      };
      if (conn.ready) send();
      else {
        conn.waiting.push((failure) => {
          if (failure !== undefined) settle(failureError(failure));
          else send();
        });
      }
    });
  }

  /** The failure of a call whose stream broke on `conn` (after its request was written). */
  private lostFailure(conn: Conn, err: unknown): ChannelFailure {
    const f = conn.failure;
    if (f !== undefined && f.kind === "ping-timeout") return new ChannelFailure(f.kind, f.message, true, err);
    const why = err instanceof Error ? err.message : "the stream ended without a gRPC status";
    return new ChannelFailure("lost", `connection to ${this.address} lost: ${why}`, true, err);
  }

  /**
   * Closes the connection: calls in flight may finish for `graceMs`, then it is destroyed;
   * later calls fail with UNAVAILABLE.
   */
  close(graceMs = 2000): void {
    this.closed = true;
    if (this.pinger !== undefined) clearInterval(this.pinger);
    this.pinger = undefined;
    const c = this.conn;
    this.conn = undefined;
    if (c === undefined) return;
    c.session.close();
    if (!c.session.destroyed) setTimeout(() => c.session.destroy(), graceMs).unref();
  }
}
