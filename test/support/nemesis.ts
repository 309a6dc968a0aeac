/**
 * The multi-host fault test's nemesis: one fault at a time on a {@link Multihost}, each with a
 * start, a heal and the list of processes it cut off, for the checker (checker.ts). A fault's
 * duration (`holdMs`) is part of the fault, not a wait for a condition: the heal comes after it
 * whatever the cluster does meanwhile. Heals run in `finally`, so a failing step never leaves a
 * process stopped or a rule in place.
 */
import { PORTS, type Multihost } from "./multihost.js";

/** What the nemesis did: the checker's fault window without what the test measures afterwards. */
export interface AppliedFault {
  /** When the fault began (taken just before it was applied). */
  readonly start: number;
  /** When it was gone (taken after the heal completed; for a kill, once restarted and healthy). */
  readonly heal: number;
  /** Processes cut off by it. */
  readonly affected: string[];
  /** What exactly was done (targets, pids, rules), for the report. */
  readonly notes: string[];
  /** Set when the fault or its heal did not go as planned. */
  readonly error?: string | undefined;
}

const hold = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Applies faults to one cluster. */
export class Nemesis {
  constructor(private readonly mh: Multihost) {}

  /**
   * `kill -9` of a process, then starting it again at once, as a supervisor would. The heal is
   * when the new process is healthy.
   */
  async killAndRestart(name: string): Promise<AppliedFault> {
    const p = this.mh.process(name);
    const start = Date.now();
    const killed = await p.kill9();
    if (killed === undefined) return { start, heal: Date.now(), affected: [name], notes: [], error: `${name} was not running` };
    this.mh.recordDeath({ process: name, pid: killed.pid, t: killed.t, byNemesis: true, how: "SIGKILL" });
    const notes = [`killed ${name} (pid ${killed.pid}) on host ${p.host}`];
    try {
      await p.start();
    } catch (err) {
      return { start, heal: Date.now(), affected: [name], notes, error: `restart failed: ${(err as Error).message}` };
    }
    notes.push(`restarted as pid ${p.pid ?? "?"}`);
    return { start, heal: Date.now(), affected: [name], notes };
  }

  /** SIGSTOP a process, SIGCONT after `holdMs`. */
  async freeze(name: string, holdMs: number): Promise<AppliedFault> {
    const p = this.mh.process(name);
    const pid = p.pid;
    const start = Date.now();
    try {
      p.signal("SIGSTOP");
      await hold(holdMs);
    } finally {
      if (p.running) p.signal("SIGCONT");
    }
    return { start, heal: Date.now(), affected: [name], notes: [`SIGSTOP ${name} (pid ${pid ?? "?"}) for ${holdMs} ms`] };
  }

  /** Drops everything in and out on a host's veth for `holdMs`: every process on it is cut off. */
  partition(host: string, holdMs: number): Promise<AppliedFault> {
    return this.withRules(host, holdMs, this.mh.onHost(host).map((p) => p.name), () => this.mh.net.partition(host), `partitioned host ${host}`);
  }

  /**
   * Cuts the etcd connections of every etcd client on a host (taskmesh services; an etcd member
   * there keeps serving the other hosts) for `holdMs`.
   */
  cutEtcd(host: string, holdMs: number): Promise<AppliedFault> {
    const clients = this.mh.onHost(host).filter((p) => p.kind !== "etcd" && p.kind !== "redis").map((p) => p.name);
    return this.withRules(host, holdMs, clients, () => this.mh.net.cutOutgoing(host, PORTS.etcdClient), `cut etcd connections on host ${host}`);
  }

  /**
   * Black-holes one etcd member for `holdMs`: all its client and peer traffic is dropped (the
   * other two keep quorum). Its host's other processes keep their connections to the other
   * members.
   */
  blackholeEtcd(member: string, holdMs: number): Promise<AppliedFault> {
    const p = this.mh.process(member);
    if (p.kind !== "etcd") throw new Error(`${member} is not an etcd member`);
    return this.withRules(
      p.host,
      holdMs,
      [member],
      () => this.mh.net.blackhole(p.host, [PORTS.etcdClient, PORTS.etcdPeer]),
      `black-holed ${member} on host ${p.host}`,
    );
  }

  /**
   * Redis failover: the master fails and a replica takes over. Only a deployment that can fail
   * over (Sentinel) supports it; with a single Redis this returns undefined.
   */
  async redisFailover(holdMs: number): Promise<AppliedFault | undefined> {
    const failover = this.mh.redis.failover;
    if (failover === undefined) return undefined;
    return failover(holdMs);
  }

  private async withRules(host: string, holdMs: number, affected: string[], apply: () => Promise<void>, what: string): Promise<AppliedFault> {
    const start = Date.now();
    const notes = [`${what} for ${holdMs} ms; cut off: ${affected.join(", ") || "none"}`];
    let error: string | undefined;
    try {
      await apply();
      notes.push((await this.mh.net.rules(host)).trim().split("\n").filter((l) => l.startsWith("-A")).join("; "));
      await hold(holdMs);
    } catch (err) {
      error = `could not apply: ${(err as Error).message}`;
    } finally {
      await this.mh.net.flush(host).catch((err: unknown) => {
        error = `${error ?? ""} could not heal: ${(err as Error).message}`.trim();
      });
    }
    return { start, heal: Date.now(), affected, notes, error };
  }
}
