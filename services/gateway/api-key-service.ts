import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import {
  ApiKeySchema,
  type ApiKeyService,
  CreateApiKeyResponseSchema,
  ListApiKeysResponseSchema,
  RevokeApiKeyResponseSchema,
} from "../../gen/taskmesh/v1/api_key_service_pb.js";
import { invalidArgument, notFound } from "../../lib/errors.js";
import { type ApiKeyRecord, type ApiKeyStore, type Caller, SCOPES, type Scope, isTenant } from "./api-keys.js";
import { allowed, CALLER } from "./auth.js";

function toProto(r: ApiKeyRecord) {
  return create(ApiKeySchema, {
    id: r.id,
    tenant: r.tenant,
    scopes: r.scopes,
    description: r.description,
    ...(r.created !== "" ? { createdAt: timestampFromMs(Date.parse(r.created)) } : {}),
  });
}

/** The caller of a key-service call (set by the auth interceptor, which required `admin`). */
function callerOf(ctx: HandlerContext): Caller {
  const caller = ctx.values.get(CALLER);
  if (caller === undefined) throw new ConnectError("an API key is required", Code.Unauthenticated);
  return caller;
}

/**
 * ApiKeyService: keys live in etcd as hashes. The auth interceptor requires `admin`; here a
 * tenant's admin manages its own tenant's keys only, and grants no scope it does not hold
 * (`cluster:admin` in particular); `cluster:admin` manages every tenant's keys. A key of another
 * tenant is NOT_FOUND to a tenant's admin, as if it did not exist.
 */
export function apiKeyService(keys: ApiKeyStore): ServiceImpl<typeof ApiKeyService> {
  const cluster = (c: Caller): boolean => c.scopes.has("cluster:admin");
  return {
    async createApiKey(req, ctx) {
      const caller = callerOf(ctx);
      if (!isTenant(req.tenant)) throw invalidArgument("tenant", "1–100 letters, digits, _ . -");
      if (req.scopes.length === 0) throw invalidArgument("scopes", `at least one of ${SCOPES.join(", ")}`);
      for (const [i, s] of req.scopes.entries()) {
        if (!(SCOPES as readonly string[]).includes(s)) throw invalidArgument(`scopes[${i}]`, `unknown scope ${JSON.stringify(s)}`);
      }
      if (req.description.length > 500) throw invalidArgument("description", "at most 500 characters");
      if (!cluster(caller) && req.tenant !== caller.tenant) {
        throw new ConnectError(`tenant: an admin of ${caller.tenant} creates keys for ${caller.tenant} only (cluster:admin for others)`, Code.PermissionDenied);
      }
      for (const [i, s] of req.scopes.entries()) {
        if (!allowed(caller.scopes, s as Scope)) {
          throw new ConnectError(`scopes[${i}]: this key cannot grant ${s}, which it does not hold`, Code.PermissionDenied);
        }
      }
      const { record, secret } = await keys.create(req.tenant, req.scopes as Scope[], req.description);
      return create(CreateApiKeyResponseSchema, { apiKey: toProto(record), secret });
    },
    async listApiKeys(_req, ctx) {
      const caller = callerOf(ctx);
      const all = await keys.list();
      return create(ListApiKeysResponseSchema, { apiKeys: all.filter((k) => cluster(caller) || k.tenant === caller.tenant).map(toProto) });
    },
    async revokeApiKey(req, ctx) {
      const caller = callerOf(ctx);
      if (req.id === "") throw invalidArgument("id", "is required");
      if (!cluster(caller)) {
        const own = (await keys.list()).some((k) => k.id === req.id && k.tenant === caller.tenant);
        if (!own) throw notFound("API key", req.id);
      }
      if (!(await keys.revoke(req.id))) throw notFound("API key", req.id);
      return create(RevokeApiKeyResponseSchema);
    },
  };
}
