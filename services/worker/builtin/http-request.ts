import { lookup as dnsLookup, type LookupAddress, type LookupOptions } from "node:dns";
import http from "node:http";
import https from "node:https";
import {
  invalidPayload,
  isJsonObject,
  optionalNonNegative,
  requireString,
  TaskFailure,
  type JsonObject,
  type JsonValue,
  type TaskContext,
  type TaskHandler,
} from "../task-api.js";
import { classifyAddress, parseIp, sameAddress } from "../net-guard.js";

/** Resolves a host name to all its addresses (the shape of `dns.promises.lookup(h, { all: true })`). */
export type LookupFn = (host: string) => Promise<{ address: string; family: 4 | 6 }[]>;

/** Options for {@link httpRequest}. */
export interface HttpRequestOptions {
  /** Hosts (names or IP addresses) that may be reached although private, loopback, etc. */
  allowedHosts: () => readonly string[];
  /** DNS resolution; the system resolver (getaddrinfo, all addresses) by default. */
  lookup?: LookupFn;
}

/** Largest response body kept; the rest is dropped and `truncated` is set. */
export const MAX_RESPONSE_BYTES = 1024 * 1024;

/** Used when the payload has no `timeout_ms`. @default 30000 */
export const DEFAULT_HTTP_TIMEOUT_MS = 30_000;

const MAX_HTTP_TIMEOUT_MS = 3_600_000;
const METHOD_PATTERN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/** The system resolver: every address, in the resolver's order. */
export const systemLookup: LookupFn = (host) =>
  new Promise((resolve, reject) => {
    dnsLookup(host, { all: true, verbatim: true }, (err, addresses) => {
      if (err !== null) reject(err);
      else resolve(addresses.map((a) => ({ address: a.address, family: a.family === 6 ? 6 : 4 })));
    });
  });

function forbidden(message: string): TaskFailure {
  return new TaskFailure("FORBIDDEN_TARGET", message, false);
}

function isAllowed(entry: string, host: string, address: string | undefined): boolean {
  const e = entry.trim().toLowerCase().replace(/\.$/, "");
  if (e === "") return false;
  if (parseIp(e) !== undefined) return sameAddress(e, host) || (address !== undefined && sameAddress(e, address));
  return e === host;
}

/**
 * Decides where the request may connect: the host's addresses after the SSRF check. Refused if
 * ANY address is not public, unless the host itself, or that address, is in the allow list.
 */
async function checkedAddresses(host: string, opts: HttpRequestOptions, signal: AbortSignal): Promise<LookupAddress[]> {
  const allowed = opts.allowedHosts();
  const hostAllowed = allowed.some((e) => isAllowed(e, host, undefined));
  const literal = parseIp(host);
  let addresses: LookupAddress[];
  if (literal !== undefined) {
    addresses = [{ address: host, family: literal.family }];
  } else {
    const lookup = opts.lookup ?? systemLookup;
    let resolved: { address: string; family: 4 | 6 }[];
    try {
      resolved = await raceAbort(lookup(host), signal);
    } catch (err) {
      if (signal.aborted) throw signal.reason;
      throw new TaskFailure("DNS_ERROR", `cannot resolve ${JSON.stringify(host)}`, true, { cause: err });
    }
    if (resolved.length === 0) throw new TaskFailure("DNS_ERROR", `no address for ${JSON.stringify(host)}`, true);
    addresses = resolved.map((a) => ({ address: a.address, family: a.family }));
  }
  if (!hostAllowed) {
    for (const a of addresses) {
      const cls = classifyAddress(a.address);
      if (cls === "public" || allowed.some((e) => isAllowed(e, host, a.address))) continue;
      throw forbidden(`${JSON.stringify(host)} resolves to a ${cls} address (${a.address}); not allowed`);
    }
  }
  return addresses;
}

function raceAbort<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

/**
 * A `lookup` for the socket that returns only the addresses already checked, so the connection
 * goes exactly where the check said (no second resolution, no DNS rebinding).
 */
function pinnedLookup(addresses: readonly LookupAddress[]) {
  return (
    _hostname: string,
    options: LookupOptions,
    callback: (err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void,
  ): void => {
    const family = options.family === 4 || options.family === 6 ? options.family : undefined;
    const usable = family === undefined ? addresses : addresses.filter((a) => a.family === family);
    const first = usable[0];
    if (first === undefined) {
      const err: NodeJS.ErrnoException = new Error("no checked address of the requested family");
      err.code = "ENOTFOUND";
      callback(err, "", undefined);
    } else if (options.all === true) {
      callback(null, [...usable]);
    } else {
      callback(null, first.address, first.family);
    }
  };
}

interface Parsed {
  method: string;
  url: URL;
  host: string;
  headers: Record<string, string>;
  body: string | undefined;
  timeoutMs: number;
}

function parsePayload(payload: JsonObject): Parsed {
  const method = requireString(payload, "method").toUpperCase();
  if (!METHOD_PATTERN.test(method)) throw invalidPayload("method: not an HTTP method");
  let url: URL;
  try {
    url = new URL(requireString(payload, "url"));
  } catch (err) {
    if (TaskFailure.is(err)) throw err;
    throw invalidPayload("url: not a valid URL");
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") throw invalidPayload("url: only http and https are supported");
  // URL keeps IPv6 literals bracketed and already normalises IPv4 oddities (0x7f.1, 2130706433).
  const host = url.hostname.replace(/^\[(.*)\]$/, "$1").toLowerCase().replace(/\.$/, "");
  if (host === "") throw invalidPayload("url: has no host");

  const headers: Record<string, string> = {};
  const rawHeaders = payload["headers"];
  if (rawHeaders !== undefined && rawHeaders !== null) {
    if (!isJsonObject(rawHeaders)) throw invalidPayload("headers: must be an object of strings");
    for (const [k, v] of Object.entries(rawHeaders)) {
      if (typeof v !== "string" && typeof v !== "number") throw invalidPayload(`headers.${k}: must be a string`);
      headers[k] = String(v);
    }
  }
  const rawBody: JsonValue | undefined = payload["body"];
  let body: string | undefined;
  if (typeof rawBody === "string") body = rawBody;
  else if (rawBody !== undefined && rawBody !== null) {
    // A JSON body given as structure is sent as JSON.
    body = JSON.stringify(rawBody);
    if (!Object.keys(headers).some((k) => k.toLowerCase() === "content-type")) headers["content-type"] = "application/json";
  }
  const timeoutMs = optionalNonNegative(payload, "timeout_ms", DEFAULT_HTTP_TIMEOUT_MS, MAX_HTTP_TIMEOUT_MS);
  return { method, url, host, headers, body, timeoutMs };
}

function send(p: Parsed, addresses: readonly LookupAddress[], signal: AbortSignal): Promise<JsonObject> {
  return new Promise((resolve, reject) => {
    let settled = false;
    const settle = (fn: () => void): void => {
      if (settled) return;
      settled = true;
      signal.removeEventListener("abort", onAbort);
      fn();
    };
    const mod = p.url.protocol === "https:" ? https : http;
    let req: http.ClientRequest;
    try {
      req = mod.request(p.url, {
        method: p.method,
        headers: p.headers,
        // A fresh connection per request: a pooled socket could belong to an earlier resolution.
        agent: false,
        lookup: pinnedLookup(addresses),
      });
    } catch (err) {
      // Invalid header names or values are thrown synchronously.
      reject(invalidPayload(`headers: ${err instanceof Error ? err.message : String(err)}`));
      return;
    }
    const onAbort = (): void => {
      req.destroy();
      settle(() => reject(signal.reason));
    };
    if (signal.aborted) {
      onAbort();
      return;
    }
    signal.addEventListener("abort", onAbort, { once: true });

    req.on("error", (err) => {
      const code = (err as NodeJS.ErrnoException).code;
      settle(() =>
        reject(new TaskFailure("HTTP_ERROR", `request failed${code === undefined ? "" : ` (${code})`}`, true, { cause: err })),
      );
    });
    req.on("response", (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      const done = (truncated: boolean): void => {
        const headers: JsonObject = {};
        for (const [k, v] of Object.entries(res.headers)) {
          if (v !== undefined) headers[k] = Array.isArray(v) ? v.join(", ") : v;
        }
        const body = Buffer.concat(chunks).toString("utf8");
        settle(() => resolve({ status: res.statusCode ?? 0, headers, body, truncated }));
      };
      res.on("data", (chunk: Buffer) => {
        if (settled) return;
        const room = MAX_RESPONSE_BYTES - size;
        if (chunk.length > room) {
          chunks.push(chunk.subarray(0, room));
          size += room;
          done(true);
          req.destroy();
          return;
        }
        chunks.push(chunk);
        size += chunk.length;
      });
      res.on("end", () => done(false));
      res.on("error", (err) => settle(() => reject(new TaskFailure("HTTP_ERROR", "response broken off", true, { cause: err }))));
      res.on("close", () => {
        if (!res.complete) settle(() => reject(new TaskFailure("HTTP_ERROR", "response broken off", true)));
      });
    });
    req.end(p.body);
  });
}

/**
 * `http_request` `{ method, url, headers?, body?, timeout_ms? }` → `{ status, headers, body,
 * truncated }`. Only http and https. The body is sent as given (a non-string body as JSON); the
 * response body is returned as UTF-8 text cut at {@link MAX_RESPONSE_BYTES} (`truncated` says
 * so), response headers as strings (repeated ones joined with ", "). Any HTTP status is a
 * successful attempt; network errors are retryable HTTP_ERROR, `timeout_ms` (default
 * {@link DEFAULT_HTTP_TIMEOUT_MS}; 0 = only the attempt's timeout) expiry is retryable
 * HTTP_TIMEOUT. Redirects are not followed.
 *
 * SSRF guard: the host is resolved first and the request is refused (FORBIDDEN_TARGET, not
 * retried) if ANY address is not public per `net-guard` (loopback, private, link-local incl.
 * cloud metadata, unspecified, CGNAT, multicast, reserved, IPv4-mapped forms of those), unless
 * the host or that address is in `allowedHosts`. The socket then connects only to the checked
 * addresses (a pinned `lookup`), which defeats DNS rebinding while keeping the real host name
 * for the Host header, TLS SNI and certificate checks. This uses `node:http(s)` rather than
 * global fetch because Node 20 does not expose undici's dispatcher API without installing the
 * undici package; proxies from the environment are not used.
 */
export function httpRequest(opts: HttpRequestOptions): TaskHandler {
  return async (payload: JsonObject, ctx: TaskContext) => {
    const p = parsePayload(payload);
    // timeout_ms 0: no limit of its own, only the attempt's.
    const timeout = p.timeoutMs > 0 ? AbortSignal.timeout(p.timeoutMs) : undefined;
    const signal = timeout === undefined ? ctx.signal : AbortSignal.any([ctx.signal, timeout]);
    try {
      const addresses = await checkedAddresses(p.host, opts, signal);
      return await send(p, addresses, signal);
    } catch (err) {
      if (ctx.signal.aborted) throw ctx.signal.reason;
      if (timeout?.aborted === true) throw new TaskFailure("HTTP_TIMEOUT", `no complete response within ${p.timeoutMs} ms`, true);
      throw err;
    }
  };
}
