import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Etcd3 } from "etcd3";
import { freePort } from "./ports.js";
import { waitFor } from "./wait.js";

/** One member of an {@link EtcdCluster}. */
export interface EtcdMember {
  readonly name: string;
  /** Client endpoint `127.0.0.1:port`. */
  readonly endpoint: string;
  readonly process: ChildProcess;
}

/** A real etcd cluster of several members on loopback, for tests. */
export interface EtcdCluster {
  readonly members: readonly EtcdMember[];
  /** Every member's client endpoint. */
  readonly endpoints: string[];
  /** SIGKILLs every member and removes the data dirs. */
  stop(): Promise<void>;
}

/** Starts `size` etcd members on free loopback ports with temp data dirs; resolves once all answer. */
export async function startEtcdCluster(size = 3): Promise<EtcdCluster> {
  const dir = await mkdtemp(join(tmpdir(), "taskmesh-etcd-cluster-"));
  const token = `tm-${process.pid}-${Date.now()}`;
  const specs = [];
  for (let i = 1; i <= size; i++) specs.push({ name: `m${i}`, client: await freePort(), peer: await freePort() });
  const initial = specs.map((s) => `${s.name}=http://127.0.0.1:${s.peer}`).join(",");
  const members: EtcdMember[] = specs.map((s) => {
    const child = spawn(
      "etcd",
      [
        "--name", s.name,
        "--data-dir", join(dir, s.name),
        "--listen-client-urls", `http://127.0.0.1:${s.client}`,
        "--advertise-client-urls", `http://127.0.0.1:${s.client}`,
        "--listen-peer-urls", `http://127.0.0.1:${s.peer}`,
        "--initial-advertise-peer-urls", `http://127.0.0.1:${s.peer}`,
        "--initial-cluster", initial,
        "--initial-cluster-token", token,
        "--initial-cluster-state", "new",
        "--heartbeat-interval", "100",
        "--election-timeout", "1000",
        "--log-level", "error",
      ],
      { stdio: ["ignore", "ignore", "ignore"] },
    );
    return { name: s.name, endpoint: `127.0.0.1:${s.client}`, process: child };
  });
  const stop = async (): Promise<void> => {
    await Promise.all(
      members.map(async (m) => {
        if (m.process.exitCode !== null || m.process.signalCode !== null) return;
        const gone = new Promise((r) => m.process.once("exit", r));
        m.process.kill("SIGCONT");
        m.process.kill("SIGKILL");
        await gone;
      }),
    );
    await rm(dir, { recursive: true, force: true });
  };
  try {
    for (const m of members) {
      const c = new Etcd3({ hosts: m.endpoint });
      try {
        await waitFor(() => c.get("/probe").then(() => true), { timeoutMs: 20_000, intervalMs: 100, what: `etcd member ${m.name}` });
      } finally {
        c.close();
      }
    }
  } catch (err) {
    await stop();
    throw err;
  }
  return { members, endpoints: members.map((m) => m.endpoint), stop };
}
