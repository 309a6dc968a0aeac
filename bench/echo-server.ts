/**
 * The far end of the bare gRPC stream echo (bench/limits.ts): a connect-node h2c server, as the
 * services run it (no compression), whose `WorkerService.Work` answers every message of
 * assignments with one message of as many results, and does nothing else. It sends its port to
 * the parent over IPC and exits when the parent goes away.
 */
import { createServer } from "node:http2";
import type { AddressInfo } from "node:net";
import { create } from "@bufbuild/protobuf";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { WorkerMessageSchema, WorkerService, type SchedulerMessage } from "../gen/taskmesh/v1/worker_service_pb.js";

const handler = connectNodeAdapter({
  routes(router) {
    router.service(WorkerService, {
      async *work(requests: AsyncIterable<SchedulerMessage>) {
        for await (const m of requests) {
          yield create(WorkerMessageSchema, {
            results: m.assignments.map((a) => ({ taskId: a.taskId, attempt: a.attempt, outcome: { case: "result" as const, value: {} } })),
          });
        }
      },
    });
  },
  acceptCompression: [],
});
const server = createServer(handler);
server.listen(0, "127.0.0.1", () => process.send?.({ port: (server.address() as AddressInfo).port }));
process.on("disconnect", () => process.exit(0));
