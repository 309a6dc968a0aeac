/** API key commands (`taskmesh keys …`, scope admin). */
import {
  CreateApiKeyResponseSchema,
  ListApiKeysResponseSchema,
  RevokeApiKeyResponseSchema,
} from "../../gen/taskmesh/v1/api_key_service_pb.js";
import { UsageError } from "../args.js";
import { arg, callOptions, type CommandSpec } from "../command.js";
import { ExitCode } from "../exit-codes.js";
import { formatFields, formatTimestamp } from "../output.js";

const createKey: CommandSpec = {
  path: ["keys", "create"],
  args: "--tenant TENANT --scope SCOPE...",
  summary: "create an API key and print its secret (shown this once)",
  details: "Scopes: tasks:read, tasks:write, admin (its tenant: keys and tasks; implies the two before), cluster:admin (every tenant, queues, configuration; implies all).",
  flags: {
    tenant: { type: "string", value: "TENANT", description: "the tenant whose tasks the key sees (required)" },
    scope: { type: "string", multiple: true, value: "SCOPE", description: "a scope (repeatable, at least one)" },
    description: { type: "string", value: "TEXT", description: "what the key is for" },
  },
  minArgs: 0,
  maxArgs: 0,
  async run(ctx, _args, flags) {
    const tenant = flags.string("tenant");
    if (tenant === undefined) throw new UsageError("--tenant is required", ["keys", "create"]);
    const scopes = flags.strings("scope").flatMap((s) => s.split(",")).map((s) => s.trim()).filter((s) => s !== "");
    if (scopes.length === 0) throw new UsageError("at least one --scope is required", ["keys", "create"]);
    const { keys } = await ctx.clients();
    const res = await keys.createApiKey({ tenant, scopes, description: flags.string("description") ?? "" }, callOptions(ctx));
    const { out } = ctx;
    if (out.json) {
      out.printJson(CreateApiKeyResponseSchema, res);
      return ExitCode.OK;
    }
    const k = res.apiKey;
    out.print(
      ...formatFields([
        ["id", k?.id ?? "-"],
        ["tenant", k?.tenant ?? "-"],
        ["scopes", k?.scopes.join(", ") ?? "-"],
        ["secret", res.secret],
      ]),
    );
    out.note("Keep the secret now: it is not shown again.");
    return ExitCode.OK;
  },
};

const list: CommandSpec = {
  path: ["keys", "ls"],
  args: "",
  summary: "list API keys (never their secrets)",
  flags: {},
  minArgs: 0,
  maxArgs: 0,
  async run(ctx) {
    const { keys } = await ctx.clients();
    const res = await keys.listApiKeys({}, callOptions(ctx));
    if (ctx.out.json) {
      ctx.out.printJson(ListApiKeysResponseSchema, res);
      return ExitCode.OK;
    }
    ctx.out.table(
      ["ID", "TENANT", "SCOPES", "CREATED", "DESCRIPTION"],
      res.apiKeys.map((k) => [k.id, k.tenant, k.scopes.join(","), formatTimestamp(k.createdAt), k.description]),
      "no API keys",
    );
    return ExitCode.OK;
  },
};

const revoke: CommandSpec = {
  path: ["keys", "revoke"],
  args: "<key-id>",
  summary: "revoke an API key; calls with it fail from then on",
  flags: {},
  minArgs: 1,
  maxArgs: 1,
  async run(ctx, args) {
    const { keys } = await ctx.clients();
    const res = await keys.revokeApiKey({ id: arg(args, 0) }, callOptions(ctx));
    if (ctx.out.json) ctx.out.printJson(RevokeApiKeyResponseSchema, res);
    else ctx.out.print(`${arg(args, 0)}: revoked`);
    return ExitCode.OK;
  },
};

/** The `keys` commands. */
export const keyCommands: readonly CommandSpec[] = [createKey, list, revoke];
