/**
 * `npx tsx bench/config-push.ts`: configuration push latency, PutConfig → applied (the config
 * client's `change` event) in each of N subscribers, over M changes made one after the other.
 * Starts its own etcd (test/support/backends.ts) and a config service, in this process by
 * default or as a real process with `--process`. Subscribers are ConfigClients in this process,
 * each with its own cache file (written after every change, as in a service).
 * Usage: npx tsx bench/config-push.ts [--changes 1000] [--subscribers 10] [--process]
 */
import { mkdtemp, rm } from "node:fs/promises";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Etcd3 } from "etcd3";
import { ConfigService, file_taskmesh_v1_config_service } from "../gen/taskmesh/v1/config_service_pb.js";
import { ConfigClient } from "../lib/config-client.js";
import { silentLogger } from "../lib/logger.js";
import { createRegistry } from "../lib/metrics.js";
import { startServer } from "../lib/server.js";
import { configRoutes } from "../services/config/config-service.js";
import { startEtcd } from "../test/support/backends.js";
import { startService } from "../test/support/mesh.js";

const { values } = parseArgs({
  options: {
    changes: { type: "string", default: "1000" },
    subscribers: { type: "string", default: "10" },
    process: { type: "boolean", default: false },
  },
});
const changes = Number(values.changes);
const subscribers = Number(values.subscribers);
const out = (s: string): void => void process.stdout.write(`${s}\n`);

function percentiles(xs: number[]): { p50: number; p90: number; p99: number; max: number; n: number } {
  const s = [...xs].sort((a, b) => a - b);
  const at = (q: number): number => s[Math.min(s.length - 1, Math.floor(q * s.length))] ?? NaN;
  return { p50: at(0.5), p90: at(0.9), p99: at(0.99), max: s.at(-1) ?? NaN, n: s.length };
}
const fmt = (p: ReturnType<typeof percentiles>): string =>
  `p50 ${p.p50.toFixed(2)} ms  p90 ${p.p90.toFixed(2)} ms  p99 ${p.p99.toFixed(2)} ms  max ${p.max.toFixed(2)} ms  (n=${p.n})`;

const closers: (() => Promise<unknown> | unknown)[] = [];
const etcdBackend = await startEtcd();
closers.push(() => etcdBackend.stop());
try {
  const root = "/bench/";
  let address: string;
  if (values.process) {
    process.env.TASKMESH_LOG_LEVEL = "warn";
    const p = await startService("config", "config", ["--etcd", etcdBackend.address, "--etcd-root", root]);
    closers.push(() => p.stop());
    address = p.address;
  } else {
    const etcd = new Etcd3({ hosts: etcdBackend.address });
    closers.push(() => etcd.close());
    const server = await startServer({
      name: "config",
      port: 0,
      routes: configRoutes(etcd, root, silentLogger()),
      files: [file_taskmesh_v1_config_service],
      registry: createRegistry("config"),
      logger: silentLogger(),
    });
    closers.push(() => server.close());
    address = server.address;
  }
  const writer = createClient(ConfigService, createGrpcTransport({ baseUrl: `http://${address}` }));
  const dir = await mkdtemp(join(tmpdir(), "taskmesh-config-bench-"));
  closers.push(() => rm(dir, { recursive: true, force: true }));

  // Each change: its number, when the put was sent, and a callback when every subscriber applied it.
  let current = { i: -1, sentAt: 0, pending: 0, appliedAt: [] as number[], done: (): void => undefined };
  const latencies: number[] = [];
  const afterResponse: number[] = [];
  const clients: ConfigClient[] = [];
  for (let k = 0; k < subscribers; k++) {
    const c = new ConfigClient({
      addresses: () => [address],
      namespaces: ["bench"],
      cacheFile: join(dir, `subscriber-${k}.json`),
      logger: silentLogger(),
    });
    c.on("change", (_ns, value) => {
      if (value?.i !== current.i) return;
      current.appliedAt.push(performance.now());
      if (--current.pending === 0) current.done();
    });
    clients.push(c);
    closers.push(() => c.close());
  }
  await writer.putConfig({ namespace: "bench", value: { i: -1 } });
  await Promise.all(clients.map((c) => c.start()));

  const putTimes: number[] = [];
  const run = async (n: number, record: boolean): Promise<void> => {
    for (let i = 0; i < n; i++) {
      const applied = new Promise<void>((resolve) => {
        current = { i: record ? i : -2 - i, sentAt: performance.now(), pending: subscribers, appliedAt: [], done: resolve };
      });
      const change = current;
      await writer.putConfig({ namespace: "bench", value: { i: change.i } });
      const answered = performance.now();
      putTimes.push(answered - change.sentAt);
      await applied;
      for (const at of change.appliedAt) {
        latencies.push(at - change.sentAt);
        afterResponse.push(at - answered);
      }
    }
  };
  await run(50, false); // warm-up
  latencies.length = 0;
  afterResponse.length = 0;
  putTimes.length = 0;
  const t0 = performance.now();
  await run(changes, true);
  const seconds = (performance.now() - t0) / 1000;

  out(`config push: ${changes} changes, one after the other, ${subscribers} subscribers, config service ${values.process ? "as a process" : "in process"}`);
  out(`machine: ${cpus().length} CPUs, Node ${process.version}`);
  out(`put → applied in every subscriber: ${fmt(percentiles(latencies))}`);
  out(`PutConfig round trip:              ${fmt(percentiles(putTimes))}`);
  out(`applied after the put's response:  ${fmt(percentiles(afterResponse))} (negative: before it)`);
  out(`throughput: ${(changes / seconds).toFixed(0)} changes/s fully applied`);
} finally {
  for (const fn of closers.reverse()) await fn();
}
