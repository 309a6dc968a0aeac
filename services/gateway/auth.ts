import { createHash, timingSafeEqual } from "node:crypto";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";

/** The caller as established by authentication. */
export interface Caller {
  tenant: string;
  keyId: string;
  scopes: ReadonlySet<string>;
}

function digest(s: string): Buffer {
  return createHash("sha256").update(s).digest();
}

/** Reads the API key from `Authorization: Bearer <key>` or `x-api-key`. */
export function presentedKey(headers: Headers): string | undefined {
  const auth = headers.get("authorization");
  if (auth !== null) {
    const m = /^Bearer\s+(\S+)$/i.exec(auth);
    if (m?.[1] !== undefined) return m[1];
  }
  return headers.get("x-api-key") ?? undefined;
}

/**
 * Until API keys land in etcd (ApiKeyService), the gateway knows one key: the bootstrap admin key.
 * With no bootstrap key configured the gateway is open (it binds to loopback only then). Keys are
 * compared as SHA-256 digests with a constant-time comparison.
 */
export function bootstrapAuth(bootstrapKey: string): Interceptor {
  const expected = bootstrapKey === "" ? undefined : digest(bootstrapKey);
  return (next) => async (req) => {
    // Health and reflection stay open, as for any gRPC server.
    if (req.service.typeName.startsWith("grpc.")) return next(req);
    if (expected !== undefined) {
      const key = presentedKey(req.header);
      if (key === undefined) throw new ConnectError("an API key is required", Code.Unauthenticated);
      if (!timingSafeEqual(digest(key), expected)) throw new ConnectError("invalid API key", Code.Unauthenticated);
    }
    return next(req);
  };
}
