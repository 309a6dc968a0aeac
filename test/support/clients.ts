import { Code, ConnectError, createClient, type Client, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { ClusterService } from "../../gen/taskmesh/v1/cluster_service_pb.js";
import { TaskService } from "../../gen/taskmesh/v1/task_service_pb.js";
import { TaskStatus, type Task } from "../../gen/taskmesh/v1/task_pb.js";
import { waitFor } from "./wait.js";

/** gRPC clients of the gateway's public services. */
export interface GatewayClients {
  tasks: Client<typeof TaskService>;
  cluster: Client<typeof ClusterService>;
}

/** A gRPC (HTTP/2) transport to a gateway, sending an API key when given. */
export function gatewayTransport(address: string, apiKey?: string): Transport {
  return createGrpcTransport({
    baseUrl: `http://${address}`,
    interceptors:
      apiKey === undefined
        ? []
        : [
            (next) => (req) => {
              req.header.set("authorization", `Bearer ${apiKey}`);
              return next(req);
            },
          ],
  });
}

/** Connects to a gateway over gRPC (HTTP/2), with an API key when given. */
export function gatewayClients(address: string, apiKey?: string): GatewayClients {
  const transport = gatewayTransport(address, apiKey);
  return { tasks: createClient(TaskService, transport), cluster: createClient(ClusterService, transport) };
}

const TERMINAL = new Set([TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED]);

/** Waits until every task is terminal; returns them in the given order. */
export async function waitTerminal(
  tasks: GatewayClients["tasks"],
  ids: string[],
  timeoutMs = 60_000,
): Promise<Task[]> {
  const done = new Map<string, Task>();
  await waitFor(
    async () => {
      const pending = ids.filter((id) => !done.has(id));
      for (let i = 0; i < pending.length; i += 64) {
        const got = await Promise.all(pending.slice(i, i + 64).map((id) => tasks.getTask({ taskId: id })));
        for (const t of got) if (TERMINAL.has(t.status)) done.set(t.id, t);
      }
      return done.size === ids.length;
    },
    { timeoutMs, intervalMs: 100, what: `${ids.length} tasks terminal` },
  );
  return ids.map((id) => done.get(id) as Task);
}

/** How a call ended: "ok", or the code of its error. */
export async function codeOf(p: Promise<unknown>): Promise<Code | "ok"> {
  try {
    await p;
    return "ok";
  } catch (err) {
    return ConnectError.from(err).code;
  }
}
