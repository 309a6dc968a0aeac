/**
 * A lean unary gRPC client over one HTTP/2 connection (binary protobuf, no compression): the
 * counterpart of lib/grpc-fast.ts, for hops that forward bytes they need not decode (the
 * gateway's calls to the scheduler). One connection per channel, opened on first use and again
 * after it fails; keepalive pings find a dead peer; every call has a deadline.
 */
import * as http2 from "node:http2";
import { Code, ConnectError } from "@connectrpc/connect";
import { findTrailerError } from "@connectrpc/connect/protocol-grpc";
import { frame, unframe, webHeaders } from "./grpc-fast.js";

/** Options for {@link GrpcChannel}. */
export interface GrpcChannelOptions {
  /** Ping an idle connection this often; a ping unanswered for as long closes it. @default 5000 */
  pingIntervalMs?: number;
}

/** Node's HTTP/2 client errors that mean "the peer is not there (any more)". */
function connectionError(err: unknown, address: string): ConnectError {
  const message = err instanceof Error ? err.message : String(err);
  return new ConnectError(`connection to ${address} failed: ${message}`, Code.Unavailable, undefined, undefined, err);
}

/** One HTTP/2 connection to `address` (`host:port`) for unary gRPC calls. */
export class GrpcChannel {
  private session: http2.ClientHttp2Session | undefined;
  private pinger: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly pingIntervalMs: number;

  constructor(
    readonly address: string,
    opts: GrpcChannelOptions = {},
  ) {
    this.pingIntervalMs = opts.pingIntervalMs ?? 5000;
  }

  private connect(): http2.ClientHttp2Session {
    if (this.session !== undefined && !this.session.closed && !this.session.destroyed) return this.session;
    const session = http2.connect(`http://${this.address}`);
    session.on("error", () => undefined); // every call on it fails with the stream's error
    const forget = (): void => {
      if (this.session === session) this.session = undefined;
    };
    session.once("close", forget);
    session.once("goaway", forget);
    session.once("connect", (s: http2.ClientHttp2Session, socket: import("node:net").Socket) => socket.setNoDelay(true));
    session.unref();
    this.session = session;
    this.startPinging();
    return session;
  }

  private startPinging(): void {
    if (this.pinger !== undefined) return;
    this.pinger = setInterval(() => {
      const s = this.session;
      if (s === undefined || s.closed || s.destroyed || s.connecting) return;
      const deadline = setTimeout(() => s.destroy(new Error("keepalive ping unanswered")), this.pingIntervalMs);
      deadline.unref();
      try {
        s.ping((err) => {
          clearTimeout(deadline);
          if (err !== null) s.destroy(err);
        });
      } catch (err) {
        clearTimeout(deadline);
        s.destroy(err instanceof Error ? err : new Error(String(err)));
      }
    }, this.pingIntervalMs);
    this.pinger.unref();
  }

  /**
   * Calls `path` (`/package.Service/Method`) with the encoded request `message` and `headers`;
   * resolves with the encoded response message. Fails with the server's status as a
   * ConnectError (details kept as received), UNAVAILABLE when the connection fails,
   * DEADLINE_EXCEEDED after `timeoutMs`, CANCELED when `signal` aborts.
   */
  unary(
    path: string,
    message: Uint8Array,
    headers: Record<string, string>,
    timeoutMs: number,
    signal?: AbortSignal,
  ): Promise<Uint8Array> {
    if (this.closed) return Promise.reject(new ConnectError("channel closed", Code.Unavailable));
    if (signal?.aborted === true) return Promise.reject(ConnectError.from(signal.reason, Code.Canceled));
    return new Promise<Uint8Array>((resolve, reject) => {
      let session: http2.ClientHttp2Session;
      let req: http2.ClientHttp2Stream;
      try {
        session = this.connect();
        req = session.request({
          ...headers,
          ":method": "POST",
          ":path": path,
          "content-type": "application/grpc+proto",
          te: "trailers",
          "grpc-timeout": `${Math.max(1, Math.ceil(timeoutMs))}m`,
        });
      } catch (err) {
        reject(connectionError(err, this.address));
        return;
      }
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
          if (!req.closed) req.close(http2.constants.NGHTTP2_CANCEL);
          reject(err);
        } else resolve(value as Uint8Array);
      };
      const onAbort = (): void => settle(ConnectError.from(signal?.reason, Code.Canceled));
      signal?.addEventListener("abort", onAbort, { once: true });
      const timer = setTimeout(
        () => settle(new ConnectError(`${path} on ${this.address}: no answer in ${timeoutMs} ms`, Code.DeadlineExceeded)),
        timeoutMs,
      );
      req.on("response", (h) => {
        responseHeaders = h;
        if (h["grpc-status"] !== undefined) status = h; // trailers-only
      });
      req.on("trailers", (t) => {
        status = t;
      });
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("error", (err) => settle(connectionError(err, this.address)));
      req.on("close", () => {
        if (settled) return;
        const httpStatus = responseHeaders === undefined ? undefined : Number(responseHeaders[":status"]);
        if (status === undefined) {
          const why = httpStatus !== undefined && httpStatus !== 200 ? `HTTP ${httpStatus}` : "the stream ended without a gRPC status";
          settle(new ConnectError(`${path} on ${this.address}: ${why}`, httpStatus === undefined ? Code.Unavailable : Code.Unknown));
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
      req.end(frame(message));
    });
  }

  /** Closes the connection; later calls fail with UNAVAILABLE. */
  close(): void {
    this.closed = true;
    if (this.pinger !== undefined) clearInterval(this.pinger);
    this.session?.close();
    this.session = undefined;
  }
}
