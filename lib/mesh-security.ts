/**
 * Transport security inside the mesh (docs/security.md): mTLS with one CA and a certificate per
 * service identity, or — where certificates are not used — a shared service token, or else
 * loopback only. This module loads and reloads the files, gives servers their TLS options and
 * the caller of each request, gives clients what to dial with, and decides who may call what.
 */
import { timingSafeEqual, createHash, X509Certificate } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import type * as http2 from "node:http2";
import { isIP } from "node:net";
import * as tls from "node:tls";
import { Code, ConnectError, createContextKey, type HandlerContext, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import type { Logger } from "./logger.js";
import { describePeer, identityOfSan, peerHasRole, type MeshPeer, type MeshRole } from "./mesh-identity.js";

/** The request header carrying the service token (when tokens are used). */
export const SERVICE_TOKEN_HEADER = "x-taskmesh-service-token";

/** The values of the mesh settings (`commonSettings` in lib/settings.ts). */
export interface MeshSecuritySettings {
  "mesh-ca": string;
  "mesh-cert": string;
  "mesh-key": string;
  "service-token": string;
}

/** How often the certificate files are checked for a change. */
const RELOAD_CHECK_MS = 2000;

interface Material {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
  identity: { role: MeshRole; name: string };
  notAfter: number;
}

function loadMaterial(files: { ca: string; cert: string; key: string }): Material {
  const ca = readFileSync(files.ca);
  const cert = readFileSync(files.cert);
  const key = readFileSync(files.key);
  // Fails on a key that does not match the certificate, or on unreadable PEM.
  tls.createSecureContext({ ca, cert, key });
  const x509 = new X509Certificate(cert);
  const identity = identityOfSan(x509.subjectAltName);
  if (identity === undefined) throw new Error(`${files.cert} names no taskmesh identity (subjectAltName URI spiffe://taskmesh/<role>/<name>)`);
  const caCerts = splitPem(ca.toString()).map((pem) => new X509Certificate(pem));
  if (!caCerts.some((c) => x509.checkIssued(c) && x509.verify(c.publicKey))) throw new Error(`${files.cert} is not signed by the CA in ${files.ca}`);
  return { ca, cert, key, identity, notAfter: Date.parse(x509.validTo) };
}

function splitPem(text: string): string[] {
  return text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
}

function mtimes(files: readonly string[]): string {
  return files
    .map((f) => {
      try {
        const s = statSync(f);
        return `${s.mtimeMs}:${s.size}:${s.ino}`;
      } catch {
        return "missing";
      }
    })
    .join("|");
}

/** True for 127.0.0.0/8, ::1 and `localhost`. */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, "");
  if (h === "localhost" || h === "::1") return true;
  if (isIP(h) === 4) return h.startsWith("127.");
  if (h.startsWith("::ffff:")) return isIP(h.slice(7)) === 4 && h.slice(7).startsWith("127.");
  return false;
}

/**
 * One process's mesh credentials: mTLS material (reloaded when its files change), a service token,
 * or neither (loopback only).
 */
export class MeshSecurity {
  private material: Material | undefined;
  private readonly listeners = new Set<() => void>();
  private timer: NodeJS.Timeout | undefined;
  private stamp = "";
  private readonly tokenHash: Buffer | undefined;

  private constructor(
    private readonly files: { ca: string; cert: string; key: string } | undefined,
    /** The shared service token, when one is set. */
    readonly token: string | undefined,
    private readonly logger: Logger | undefined,
  ) {
    this.tokenHash = token === undefined ? undefined : createHash("sha256").update(token).digest();
    if (files !== undefined) {
      this.stamp = mtimes([files.ca, files.cert, files.key]);
      this.material = loadMaterial(files);
      this.timer = setInterval(() => this.checkReload(), RELOAD_CHECK_MS);
      this.timer.unref();
    }
  }

  /** No mTLS and no token: loopback only. */
  static none(): MeshSecurity {
    return new MeshSecurity(undefined, undefined, undefined);
  }

  /**
   * Reads the settings: all three of CA, certificate and key, or none of them; a token or not.
   * `role`, when given, must be the role in the certificate (a scheduler does not start with a
   * worker's certificate).
   */
  static fromSettings(s: MeshSecuritySettings, opts: { role?: MeshRole; logger?: Logger } = {}): MeshSecurity {
    const given = [s["mesh-ca"], s["mesh-cert"], s["mesh-key"]].filter((f) => f !== "").length;
    if (given !== 0 && given !== 3) throw new Error("--mesh-ca, --mesh-cert and --mesh-key go together");
    const files = given === 3 ? { ca: s["mesh-ca"], cert: s["mesh-cert"], key: s["mesh-key"] } : undefined;
    const security = new MeshSecurity(files, s["service-token"] === "" ? undefined : s["service-token"], opts.logger);
    const id = security.identity;
    if (opts.role !== undefined && id !== undefined && id.role !== opts.role) {
      security.close();
      throw new Error(`--mesh-cert is a ${id.role}'s certificate (${id.role}/${id.name}); this service needs a ${opts.role} certificate`);
    }
    return security;
  }

  /** True when mTLS is on. */
  get tls(): boolean {
    return this.material !== undefined;
  }

  /** The identity in this process's certificate (mTLS only). */
  get identity(): { role: MeshRole; name: string } | undefined {
    return this.material?.identity;
  }

  /** Called after the certificate files changed and were loaded again. */
  onReload(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Looks at the files now (the timer does this every 2 s); true when new material was loaded. */
  checkReload(): boolean {
    const files = this.files;
    if (files === undefined) return false;
    const stamp = mtimes([files.ca, files.cert, files.key]);
    if (stamp === this.stamp) return false;
    let next: Material;
    try {
      next = loadMaterial(files);
    } catch (err) {
      // Files are often replaced one at a time: keep the old material until they agree again.
      this.logger?.warn({ err }, "mesh certificate files changed but do not load yet; keeping the current ones");
      return false;
    }
    this.stamp = stamp;
    this.material = next;
    this.logger?.info({ identity: `${next.identity.role}/${next.identity.name}`, notAfter: new Date(next.notAfter).toISOString() }, "mesh certificate reloaded");
    for (const l of this.listeners) l();
    return true;
  }

  /** The TLS options of a server: client certificates requested, checked per request (see {@link peerOfSocket}). */
  serverTlsOptions(): tls.TlsOptions {
    const m = this.material;
    if (m === undefined) throw new Error("mesh TLS is off");
    // Not rejected in the handshake: a caller without a certificate gets a gRPC/HTTP error that
    // says what is missing, and health checks stay open.
    return { ca: m.ca, cert: m.cert, key: m.key, requestCert: true, rejectUnauthorized: false };
  }

  /** `https://address` with mTLS, else `http://address`. */
  url(address: string): string {
    return `${this.tls ? "https" : "http"}://${address}`;
  }

  /**
   * Options for `http2.connect` (and connect-node's transports) to a peer that must hold one of
   * `roles`: the mesh CA, this process's certificate, and a check of the peer's identity instead
   * of its host name (peers are dialled by the address they registered, which may be any).
   */
  clientOptions(roles: readonly MeshRole[]): http2.SecureClientSessionOptions {
    if (this.material === undefined) return {};
    const current = (): Material => {
      if (this.material === undefined) throw new Error("mesh TLS is off");
      return this.material;
    };
    // Getters: every new connection (http2.connect copies its options) takes the material
    // loaded last, so reloaded certificates are used without rebuilding clients.
    return {
      get ca() {
        return current().ca;
      },
      get cert() {
        return current().cert;
      },
      get key() {
        return current().key;
      },
      // A ConnectError: clients then report it as it is (UNAVAILABLE: no trustworthy peer there).
      checkServerIdentity: (host, cert) => {
        const id = identityOfSan(cert.subjectaltname);
        if (id === undefined) return new ConnectError(`the peer at ${host} has a certificate that names no taskmesh identity`, Code.Unavailable);
        if (!roles.includes(id.role)) {
          return new ConnectError(`the peer at ${host} is ${id.role}/${id.name}, expected a ${roles.join(" or ")}`, Code.Unavailable);
        }
        return undefined;
      },
    };
  }

  /** Headers every call carries (the service token, when one is set). */
  headers(): Record<string, string> {
    return this.token === undefined ? {} : { [SERVICE_TOKEN_HEADER]: this.token };
  }

  /** A connect interceptor adding {@link headers} to every call. */
  interceptor(): Interceptor {
    const headers = Object.entries(this.headers());
    return (next) => (req) => {
      for (const [k, v] of headers) req.header.set(k, v);
      return next(req);
    };
  }

  /**
   * Refuses to serve internal RPCs on a non-loopback address without mTLS or a token: anyone on
   * the network could call them.
   */
  assertSafeBind(host: string, service: string): void {
    if (this.tls || this.token !== undefined || isLoopbackHost(host)) return;
    throw new Error(
      `refusing to serve ${service} on ${host} without mTLS (--mesh-ca, --mesh-cert, --mesh-key) or a service token (--service-token): ` +
        "anyone who can reach the port could call it. Bind 127.0.0.1, or set one of them (README, Security)",
    );
  }

  /** The caller of a connection, as far as the connection alone tells (see {@link peerOfRequest}). */
  peerOfSocket(socket: { remoteAddress?: string | undefined } & Partial<Pick<tls.TLSSocket, "authorized" | "getPeerCertificate">>): MeshPeer | undefined {
    if (this.tls) {
      if (socket.authorized !== true || socket.getPeerCertificate === undefined) return undefined;
      const id = identityOfSan(socket.getPeerCertificate().subjectaltname);
      return id === undefined ? undefined : { kind: "certificate", ...id };
    }
    if (this.token !== undefined) return undefined;
    return isLoopbackHost(socket.remoteAddress ?? "") ? { kind: "trusted", how: "loopback" } : undefined;
  }

  /** The caller of one request: its connection's identity, else the service token it carries. */
  peerOfRequest(socketPeer: MeshPeer | undefined, token: string | string[] | undefined): MeshPeer | undefined {
    if (socketPeer !== undefined) return socketPeer;
    if (this.tokenHash === undefined || typeof token !== "string") return undefined;
    const got = createHash("sha256").update(token).digest();
    return timingSafeEqual(got, this.tokenHash) ? { kind: "trusted", how: "token" } : undefined;
  }

  /** Stops watching the files. */
  close(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    this.listeners.clear();
  }
}

/**
 * A TLS handshake that fails (a peer whose certificate the mesh CA did not sign, expired, or
 * names the wrong identity) is no bug of ours: UNAVAILABLE, like any peer that cannot be
 * reached, rather than connect-node's INTERNAL.
 */
const tlsFailureInterceptor: Interceptor = (next) => async (req) => {
  try {
    return await next(req);
  } catch (err) {
    if (err instanceof ConnectError && err.code === Code.Internal && isTlsFailure(err.cause)) {
      throw new ConnectError(`TLS with the peer failed: ${err.rawMessage}`, Code.Unavailable, undefined, undefined, err.cause);
    }
    throw err;
  }
};

/** OpenSSL's certificate verification results Node reports as error codes. */
const TLS_VERIFY_CODES = /^(ERR_TLS_|ERR_SSL_|UNABLE_TO_|CERT_|DEPTH_ZERO_SELF_SIGNED_CERT|SELF_SIGNED_CERT_IN_CHAIN|INVALID_CA|HOSTNAME_MISMATCH)/;

function isTlsFailure(err: unknown): boolean {
  for (let e = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    const code = (e as NodeJS.ErrnoException).code;
    if (typeof code === "string" && TLS_VERIFY_CODES.test(code)) return true;
    if (e.message.includes("SSL routines")) return true;
  }
  return false;
}

/** HTTP/2 keepalive of a mesh connection (connect-node's session manager options). */
export interface MeshPingOptions {
  pingIntervalMs?: number;
  pingTimeoutMs?: number;
  pingIdleConnection?: boolean;
}

/**
 * A connect-node gRPC transport to a mesh peer at `address` whose certificate must hold one of
 * `peerRoles` (mTLS), carrying the service token when one is set; plaintext without `security`.
 * The session manager is returned too, so its owner can close it.
 */
export function meshTransport(
  security: MeshSecurity | undefined,
  address: string,
  peerRoles: readonly MeshRole[],
  ping: MeshPingOptions = {},
): { manager: Http2SessionManager; transport: Transport } {
  const baseUrl = security?.url(address) ?? `http://${address}`;
  const manager = new Http2SessionManager(baseUrl, ping, security?.clientOptions(peerRoles));
  const interceptors = [tlsFailureInterceptor, ...(security?.token !== undefined ? [security.interceptor()] : [])];
  // Compressing costs much CPU on streams of batches for little gain: never on the mesh.
  return { manager, transport: createGrpcTransport({ baseUrl, sessionManager: manager, acceptCompression: [], interceptors }) };
}

/** The authenticated caller of a handler's call (set by the server; undefined if none). */
export const MESH_PEER = createContextKey<MeshPeer | undefined>(undefined, { description: "the authenticated mesh caller" });

/** The caller of a call, as the server authenticated it. */
export function meshPeer(ctx: HandlerContext): MeshPeer | undefined {
  return ctx.values.get(MESH_PEER);
}

/**
 * Who may call what on one server: roles by service type name (`taskmesh.v1.SchedulerService`)
 * or by method path (`/taskmesh.v1.ConfigService/PutConfig`, which wins). Health checks are open
 * to anyone; reflection and metrics to any authenticated caller; anything not listed to nobody.
 */
export type AccessPolicy = Readonly<Record<string, readonly MeshRole[]>>;

const OPEN_PREFIXES = ["/grpc.health.v1.Health/"];
const ANY_PEER_PREFIXES = ["/grpc.reflection.v1.ServerReflection/", "/grpc.reflection.v1alpha.ServerReflection/"];

/** Undefined when `peer` may call `path`; otherwise the error to answer with. */
export function authorize(policy: AccessPolicy, path: string, peer: MeshPeer | undefined): ConnectError | undefined {
  if (OPEN_PREFIXES.some((p) => path.startsWith(p))) return undefined;
  if (peer === undefined) {
    return new ConnectError(`${path} needs a client certificate of the mesh CA or the service token`, Code.Unauthenticated);
  }
  if (ANY_PEER_PREFIXES.some((p) => path.startsWith(p)) || path === "/metrics") return undefined;
  const service = path.split("/")[1] ?? "";
  const roles = policy[path] ?? policy[service];
  if (roles !== undefined && peerHasRole(peer, roles)) return undefined;
  const allowed = roles === undefined ? "nobody" : `only ${roles.join(", ")}`;
  return new ConnectError(`${describePeer(peer)} may not call ${path} (${allowed})`, Code.PermissionDenied);
}
