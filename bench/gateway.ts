/**
 * `npx tsx bench/gateway.ts`: GetTask requests/s and latency through the gateway over gRPC and
 * over REST, beside the same call made to the scheduler directly: what the gateway adds.
 * 64 calls in flight, 5 s per path, after a warm-up; real etcd, Redis and service processes.
 */
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Health } from "../gen/grpc/health/v1/health_pb.js";
import { SchedulerService } from "../gen/taskmesh/v1/scheduler_service_pb.js";
import { TENANT_HEADER } from "../lib/task-types.js";
import { startEtcd, startRedis } from "../test/support/backends.js";
import { gatewayClients } from "../test/support/clients.js";
import { startMesh } from "../test/support/mesh.js";

const out = (s: string): void => void process.stdout.write(`${s}\n`);
process.env.TASKMESH_LOG_LEVEL = "warn";
const seconds = Number(process.argv[2] ?? 5);
const inFlight = 64;

async function measure(name: string, call: () => Promise<unknown>): Promise<void> {
  for (let i = 0; i < 500; i++) await call();
  const lat: number[] = [];
  const end = performance.now() + seconds * 1000;
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (performance.now() < end) {
        const t = performance.now();
        await call();
        lat.push(performance.now() - t);
      }
    }),
  );
  lat.sort((a, b) => a - b);
  const q = (p: number): string => (lat[Math.floor(p * (lat.length - 1))] ?? NaN).toFixed(2);
  out(`| ${name} | ${(lat.length / seconds).toFixed(0)} | ${q(0.5)} | ${q(0.99)} |`);
}

const [redis, etcd] = await Promise.all([startRedis(), startEtcd()]);
const mesh = await startMesh({ etcdEndpoint: etcd.address, redisUrl: redis.address, prefix: "gwbench", workers: 1 });
try {
  const c = gatewayClients(mesh.gateway.address, mesh.apiKey);
  const task = await c.tasks.submitTask({ type: "noop" });
  const direct = createClient(SchedulerService, createGrpcTransport({ baseUrl: `http://${mesh.schedulers[0]?.address}` }));
  const headers = { [TENANT_HEADER]: "default" };
  const url = `http://${mesh.gateway.address}/v1/tasks/${task.id}`;
  const auth = { authorization: `Bearer ${mesh.apiKey}` };
  out(`GetTask, ${inFlight} in flight, ${seconds} s each`);
  out("| path | requests/s | p50 ms | p99 ms |");
  out("|---|---|---|---|");
  const health = createClient(Health, createGrpcTransport({ baseUrl: `http://${mesh.schedulers[0]?.address}` }));
  await measure("scheduler Health/Check (gRPC)", () => health.check({ service: "" }));
  await measure("scheduler directly (gRPC)", () => direct.getTask({ taskId: task.id }, { headers }));
  await measure("gateway, gRPC", () => c.tasks.getTask({ taskId: task.id }));
  await measure("gateway, REST (HTTP/1.1 fetch)", async () => {
    const r = await fetch(url, { headers: auth });
    await r.arrayBuffer();
  });
} finally {
  await mesh.close();
  await Promise.all([redis.stop(), etcd.stop()]);
}
