import * as http from "node:http";
import * as https from "node:https";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import {
  Health,
  HealthCheckResponseSchema,
  HealthCheckResponse_ServingStatus as ServingStatus,
  HealthListResponseSchema,
  type HealthCheckRequest,
  type HealthCheckResponse,
} from "../gen/grpc/health/v1/health_pb.js";

/** The health status enum of `grpc.health.v1` (SERVING, NOT_SERVING, ...), under a shorter name. */
export { HealthCheckResponse_ServingStatus as ServingStatus } from "../gen/grpc/health/v1/health_pb.js";

/** Called with a service's new status whenever it changes. */
type StatusListener = (status: ServingStatus) => void;

/**
 * The serving status of each health-checked name, as `grpc.health.v1.Health` reports it: `""` is
 * the server as a whole, other names are full service names (`taskmesh.v1.TaskService`).
 * Unknown names are NOT_FOUND for Check and SERVICE_UNKNOWN for Watch, as the gRPC spec says.
 */
export class HealthRegistry {
  readonly #statuses = new Map<string, ServingStatus>();
  readonly #listeners = new Map<string, Set<StatusListener>>();

  /** Sets the status of one name (creating it), telling its watchers when it changed. */
  set(service: string, status: ServingStatus): void {
    if (this.#statuses.get(service) === status) return;
    this.#statuses.set(service, status);
    for (const listener of this.#listeners.get(service) ?? []) listener(status);
  }

  /** Sets every known name to SERVING or NOT_SERVING. */
  setAll(serving: boolean): void {
    const status = serving ? ServingStatus.SERVING : ServingStatus.NOT_SERVING;
    for (const service of [...this.#statuses.keys()]) this.set(service, status);
  }

  /** The status of a name, or undefined when it is not known. */
  get(service: string): ServingStatus | undefined {
    return this.#statuses.get(service);
  }

  /** A snapshot of every name and its status. */
  list(): ReadonlyMap<string, ServingStatus> {
    return new Map(this.#statuses);
  }

  /** Calls `listener` on every change of `service`'s status; returns the unsubscribe function. */
  subscribe(service: string, listener: StatusListener): () => void {
    let set = this.#listeners.get(service);
    if (set === undefined) {
      set = new Set();
      this.#listeners.set(service, set);
    }
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0) this.#listeners.delete(service);
    };
  }
}

function response(status: ServingStatus): HealthCheckResponse {
  return create(HealthCheckResponseSchema, { status });
}

/**
 * Streams `service`'s status: the current one at once (SERVICE_UNKNOWN when unknown), then each
 * change, until the call's signal aborts (client gone, or server shutdown). Changes that happen
 * faster than the client reads are coalesced: the client always ends on the latest status.
 */
async function* watch(health: HealthRegistry, service: string, signal: AbortSignal): AsyncGenerator<HealthCheckResponse> {
  let latest = health.get(service) ?? ServingStatus.SERVICE_UNKNOWN;
  let sent: ServingStatus | undefined;
  let wake: (() => void) | undefined;
  const unsubscribe = health.subscribe(service, (status) => {
    latest = status;
    wake?.();
  });
  const onAbort = (): void => wake?.();
  signal.addEventListener("abort", onAbort, { once: true });
  try {
    while (!signal.aborted) {
      if (latest !== sent) {
        sent = latest;
        yield response(sent);
        continue;
      }
      await new Promise<void>((resolve) => {
        wake = resolve;
      });
      wake = undefined;
    }
  } finally {
    unsubscribe();
    signal.removeEventListener("abort", onAbort);
  }
}

/** Registers `grpc.health.v1.Health` (Check, Watch, List) backed by `health` on a router. */
export function registerHealthService(router: ConnectRouter, health: HealthRegistry): void {
  router.service(Health, {
    check(req: HealthCheckRequest): HealthCheckResponse {
      const status = health.get(req.service);
      if (status === undefined) {
        throw new ConnectError(`unknown service ${JSON.stringify(req.service)}`, Code.NotFound);
      }
      return response(status);
    },
    watch(req: HealthCheckRequest, ctx: HandlerContext): AsyncGenerator<HealthCheckResponse> {
      return watch(health, req.service, ctx.signal);
    },
    list() {
      const statuses: Record<string, HealthCheckResponse> = {};
      for (const [service, status] of health.list()) statuses[service] = response(status);
      return create(HealthListResponseSchema, { statuses });
    },
  });
}

/**
 * The HTTP status of `GET /healthz` on `host:port`, or undefined when nothing answered within
 * `timeoutMs`. With `ca` (PEM) the port is spoken to over TLS trusting that CA; `/healthz` needs
 * no client certificate (docs/security.md), and the server's identity is not checked: this only
 * asks whether something healthy listens there.
 */
export function probeHealthz(host: string, port: number, opts: { ca?: Buffer | string; timeoutMs?: number } = {}): Promise<number | undefined> {
  return new Promise((resolve) => {
    const options = { host, port, path: "/healthz", timeout: opts.timeoutMs ?? 2000 };
    const onResponse = (res: http.IncomingMessage): void => {
      res.resume();
      resolve(res.statusCode);
    };
    const req =
      opts.ca === undefined
        ? http.get(options, onResponse)
        : https.get({ ...options, ca: opts.ca, checkServerIdentity: () => undefined }, onResponse);
    req.on("error", () => resolve(undefined));
    req.on("timeout", () => req.destroy());
  });
}
