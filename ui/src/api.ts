import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { BadRequestSchema } from "../../gen/google/rpc/error_details_pb.js";
import { ClusterService } from "../../gen/taskmesh/v1/cluster_service_pb.js";
import { ConfigService } from "../../gen/taskmesh/v1/config_service_pb.js";
import { TaskService } from "../../gen/taskmesh/v1/task_service_pb.js";

const KEY_STORAGE = "taskmesh.apiKey";

/** The API key the user entered; kept in sessionStorage (gone when the tab closes). */
export const apiKey = {
  get(): string | undefined {
    return sessionStorage.getItem(KEY_STORAGE) ?? undefined;
  },
  set(key: string): void {
    sessionStorage.setItem(KEY_STORAGE, key);
  },
  clear(): void {
    sessionStorage.removeItem(KEY_STORAGE);
  },
};

/** Sends the stored key as `Authorization: Bearer <key>` on every call. */
const auth: Interceptor = (next) => (req) => {
  const key = apiKey.get();
  if (key !== undefined) req.header.set("authorization", `Bearer ${key}`);
  return next(req);
};

// Same origin as the gateway that served the page: Connect over fetch (unary and server streams).
const transport = createConnectTransport({ baseUrl: location.origin, interceptors: [auth] });

/** Clients of the gateway's public services. */
export const api: {
  tasks: Client<typeof TaskService>;
  cluster: Client<typeof ClusterService>;
  config: Client<typeof ConfigService>;
} = {
  tasks: createClient(TaskService, transport),
  cluster: createClient(ClusterService, transport),
  config: createClient(ConfigService, transport),
};

/** The gRPC name of a code, as the gRPC docs spell it: `INVALID_ARGUMENT`, `CANCELLED`. */
export function codeName(code: Code): string {
  if (code === Code.Canceled) return "CANCELLED";
  const name = Code[code] as string | undefined;
  return name === undefined ? `CODE_${code}` : name.replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/** What the user is shown about a failed call: the gRPC code, the message, and field violations. */
export interface ErrorReport {
  code: string;
  message: string;
  details: string[];
}

/** Describes any error thrown by a call (or by the page's own checks) for the user. */
export function describeError(err: unknown): ErrorReport {
  const e = ConnectError.from(err);
  const details: string[] = [];
  for (const br of e.findDetails(BadRequestSchema)) {
    for (const v of br.fieldViolations) details.push(`${v.field}: ${v.description}`);
  }
  return { code: codeName(e.code), message: e.rawMessage, details };
}

/** True for an error that means the stored key is no good. */
export function isUnauthenticated(err: unknown): boolean {
  return err instanceof ConnectError && err.code === Code.Unauthenticated;
}

/** True for an error caused by our own abort (leaving a view). */
export function isAbort(err: unknown, signal?: AbortSignal): boolean {
  if (signal?.aborted === true) return true;
  return err instanceof ConnectError && err.code === Code.Canceled;
}
