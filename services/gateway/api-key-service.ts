import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  ApiKeySchema,
  type ApiKeyService,
  CreateApiKeyResponseSchema,
  ListApiKeysResponseSchema,
  RevokeApiKeyResponseSchema,
} from "../../gen/taskmesh/v1/api_key_service_pb.js";
import { invalidArgument, notFound } from "../../lib/errors.js";
import { type ApiKeyRecord, type ApiKeyStore, SCOPES, type Scope, isTenant } from "./api-keys.js";

function toProto(r: ApiKeyRecord) {
  return create(ApiKeySchema, {
    id: r.id,
    tenant: r.tenant,
    scopes: r.scopes,
    description: r.description,
    ...(r.created !== "" ? { createdAt: timestampFromMs(Date.parse(r.created)) } : {}),
  });
}

/** ApiKeyService (scope admin, enforced by the auth interceptor): keys live in etcd as hashes. */
export function apiKeyService(keys: ApiKeyStore): ServiceImpl<typeof ApiKeyService> {
  return {
    async createApiKey(req) {
      if (!isTenant(req.tenant)) throw invalidArgument("tenant", "1–100 letters, digits, _ . -");
      if (req.scopes.length === 0) throw invalidArgument("scopes", `at least one of ${SCOPES.join(", ")}`);
      for (const [i, s] of req.scopes.entries()) {
        if (!(SCOPES as readonly string[]).includes(s)) throw invalidArgument(`scopes[${i}]`, `unknown scope ${JSON.stringify(s)}`);
      }
      if (req.description.length > 500) throw invalidArgument("description", "at most 500 characters");
      const { record, secret } = await keys.create(req.tenant, req.scopes as Scope[], req.description);
      return create(CreateApiKeyResponseSchema, { apiKey: toProto(record), secret });
    },
    async listApiKeys() {
      return create(ListApiKeysResponseSchema, { apiKeys: (await keys.list()).map(toProto) });
    },
    async revokeApiKey(req) {
      if (req.id === "") throw invalidArgument("id", "is required");
      if (!(await keys.revoke(req.id))) throw notFound("API key", req.id);
      return create(RevokeApiKeyResponseSchema);
    },
  };
}
