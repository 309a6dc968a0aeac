/**
 * A lean gRPC client for taskmesh's unary methods (TaskService, ClusterService, ScheduleService,
 * ConfigService, ApiKeyService at the gateway; or any service of ours), over one HTTP/2
 * connection with binary protobuf: what the benchmark and Node programs that submit many tasks
 * use. It speaks the same wire protocol as every gRPC client; connect's or grpc-js' clients work
 * the same way, at two to five times the CPU per call (bench/RESULTS.md). Streaming methods
 * (WatchTask…) are not here: use a connect client for those.
 *
 * ```ts
 * const tasks = unaryClient(TaskService, new GrpcChannel("localhost:8080"), { apiKey });
 * const task = await tasks.submitTask({ type: "noop" });
 * ```
 */
import {
  create,
  fromBinary,
  toBinary,
  type DescMethodUnary,
  type DescService,
  type MessageInitShape,
  type MessageShape,
} from "@bufbuild/protobuf";
import type { GrpcChannel } from "./grpc-channel.js";

/** Per-call options. */
export interface CallOptions {
  signal?: AbortSignal;
  /** Deadline of this call (ms). @default the client's */
  timeoutMs?: number;
  /** Extra request headers. */
  headers?: Record<string, string>;
}

type Unary<M> = M extends DescMethodUnary<infer I, infer O>
  ? (request: MessageInitShape<I>, options?: CallOptions) => Promise<MessageShape<O>>
  : never;

/** The unary methods of service `S`, by their local names (`submitTask`). */
export type UnaryClient<S extends DescService> = {
  [K in keyof S["method"] as S["method"][K] extends DescMethodUnary ? K : never]: Unary<S["method"][K]>;
};

/** Options for {@link unaryClient}. */
export interface UnaryClientOptions {
  /** Sent as `Authorization: Bearer <apiKey>`. */
  apiKey?: string;
  /** Headers sent with every call. */
  headers?: Record<string, string>;
  /** Deadline of each call (ms). @default 30000 */
  timeoutMs?: number;
}

/** A client of `service`'s unary methods over `channel`. */
export function unaryClient<S extends DescService>(service: S, channel: GrpcChannel, opts: UnaryClientOptions = {}): UnaryClient<S> {
  const base: Record<string, string> = { ...opts.headers };
  if (opts.apiKey !== undefined) base.authorization = `Bearer ${opts.apiKey}`;
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const client: Record<string, unknown> = {};
  for (const method of service.methods) {
    if (method.methodKind !== "unary") continue;
    const m = method as DescMethodUnary;
    const path = `/${service.typeName}/${m.name}`;
    client[m.localName] = async (request: MessageInitShape<DescMethodUnary["input"]>, o: CallOptions = {}) => {
      const bytes = toBinary(m.input, create(m.input, request));
      const headers = o.headers === undefined ? base : { ...base, ...o.headers };
      const answer = await channel.unary(path, bytes, headers, o.timeoutMs ?? timeoutMs, o.signal);
      return fromBinary(m.output, answer);
    };
  }
  return client as UnaryClient<S>;
}
