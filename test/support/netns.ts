/**
 * Hosts on one machine for the multi-host fault test: Linux network namespaces joined by a bridge
 * that lives in a namespace of its own, one veth pair per host, addresses from a private /24 that
 * nothing on this machine routes, and iptables (legacy) rules inside a host's namespace for
 * faults. Nothing is created in the root namespace: no address, no interface, no rule, so the
 * hosts can reach each other and nothing else, and nothing else can reach them.
 *
 * Every name starts with {@link NS_PREFIX} and carries the owning test process's pid, so that
 * {@link sweepStale} can remove what a crashed or killed run left behind without touching a run
 * that is still going. Processes are started through {@link Network.command}, which adds
 * `setpriv --pdeathsig KILL`: they die with the test process even when it is killed outright.
 * Needs root, `ip` (iproute2), `iptables-legacy` and `setpriv` (util-linux).
 */
import { execFile, execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readdir, rm, stat } from "node:fs/promises";
import { rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** Prefix of every namespace and run directory this harness creates. */
export const NS_PREFIX = "tmh-";

/** Longest time one `ip` or `iptables` command may take before it counts as failed. */
const COMMAND_TIMEOUT_MS = 10_000;

/** Runs a command with a deadline; rejects with its stderr on a non-zero exit. */
export function run(file: string, args: readonly string[], timeoutMs = COMMAND_TIMEOUT_MS): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: timeoutMs, killSignal: "SIGKILL", maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err !== null) {
        reject(new Error(`${file} ${args.join(" ")}: ${stderr.trim() || err.message}`, { cause: err }));
        return;
      }
      resolve(stdout);
    });
  });
}

function runSync(file: string, args: readonly string[]): string {
  return execFileSync(file, args, { timeout: COMMAND_TIMEOUT_MS, killSignal: "SIGKILL", stdio: ["ignore", "pipe", "pipe"] }).toString();
}

/** What this machine must provide; undefined when everything is there, else why not. */
export function missingPrerequisite(): string | undefined {
  if (process.platform !== "linux") return "network namespaces need Linux";
  if (process.getuid?.() !== 0) return "network namespaces, veth pairs and iptables need root";
  for (const [tool, pkg] of [
    ["ip", "iproute2"],
    ["iptables-legacy", "iptables"],
    ["setpriv", "util-linux"],
    ["etcd", "etcd-server"],
    ["etcdctl", "etcd-client"],
    ["redis-server", "redis-server"],
  ] as const) {
    try {
      execFileSync("sh", ["-c", `command -v ${tool}`], { stdio: "ignore" });
    } catch {
      return `${tool} is missing (Debian package ${pkg})`;
    }
  }
  return undefined;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** `tmh-<pid>-<tag>-<host>` → the owner pid, when the name is one of ours. */
function ownerOf(name: string): number | undefined {
  const m = /^tmh-(\d+)-[0-9a-f]+(?:-|$)/.exec(name);
  return m === null ? undefined : Number(m[1]);
}

async function listNamespaces(): Promise<string[]> {
  const out = await run("ip", ["netns", "list"]);
  return out
    .split("\n")
    .map((l) => l.trim().split(/\s+/)[0] ?? "")
    .filter((n) => n !== "");
}

function killNamespacePidsSync(ns: string): void {
  let out = "";
  try {
    out = runSync("ip", ["netns", "pids", ns]);
  } catch {
    return;
  }
  for (const p of out.split("\n").map((s) => Number(s.trim())).filter((n) => Number.isInteger(n) && n > 0)) {
    try {
      process.kill(p, "SIGKILL");
    } catch {
      // already gone
    }
  }
}

/**
 * Removes what earlier runs left behind when their test process died without cleaning up (its
 * pid is in every name): kills the processes still inside their namespaces, deletes the
 * namespaces (and with them the bridge, the veths and the rules), removes their data
 * directories, and run directories (kept logs) older than a day. Runs of live processes are
 * left alone. Returns the namespaces it deleted.
 */
export async function sweepStale(): Promise<string[]> {
  const swept: string[] = [];
  for (const ns of await listNamespaces()) {
    if (!ns.startsWith(NS_PREFIX)) continue;
    const owner = ownerOf(ns);
    if (owner === undefined || pidAlive(owner)) continue;
    killNamespacePidsSync(ns);
    await run("ip", ["netns", "delete", ns]).catch(() => undefined);
    swept.push(ns);
  }
  const base = tmpdir();
  for (const name of await readdir(base).catch(() => [] as string[])) {
    if (!name.startsWith(NS_PREFIX)) continue;
    const owner = ownerOf(name);
    if (owner === undefined || pidAlive(owner)) continue;
    const dir = join(base, name);
    await rm(join(dir, "data"), { recursive: true, force: true });
    const s = await stat(dir).catch(() => undefined);
    if (s !== undefined && Date.now() - s.mtimeMs > 24 * 3600_000) await rm(dir, { recursive: true, force: true });
  }
  return swept;
}

function ipToInt(ip: string): number {
  return ip.split(".").reduce((acc, p) => acc * 256 + Number(p), 0);
}

/** True when a.b.c.0/24 meets any IPv4 address or route of the root namespace. */
async function subnetInUse(subnet: string): Promise<boolean> {
  const lo = ipToInt(`${subnet}.0`);
  const hi = lo + 255;
  const nets: [number, number][] = [];
  const routes = JSON.parse(await run("ip", ["-j", "-4", "route", "show", "table", "all"])) as { dst?: string }[];
  const addrs = JSON.parse(await run("ip", ["-j", "-4", "addr"])) as { addr_info?: { local?: string; prefixlen?: number }[] }[];
  const add = (ip: string, len: number): void => {
    const size = 2 ** (32 - len);
    const start = Math.floor(ipToInt(ip) / size) * size;
    nets.push([start, start + size - 1]);
  };
  for (const r of routes) {
    if (r.dst === undefined || r.dst === "default") continue;
    const [ip, len] = r.dst.split("/");
    if (ip !== undefined && /^\d+\.\d+\.\d+\.\d+$/.test(ip)) add(ip, len === undefined ? 32 : Number(len));
  }
  for (const a of addrs) for (const i of a.addr_info ?? []) if (i.local !== undefined) add(i.local, i.prefixlen ?? 32);
  return nets.some(([a, b]) => a <= hi && b >= lo);
}

/** One process in a host's namespace as `spawn` takes it. */
export interface HostCommand {
  readonly file: string;
  readonly args: string[];
}

/** Every live {@link Network}, for the synchronous cleanup on exit or interrupt. */
const live = new Set<Network>();
let exitHooked = false;

function hookExit(): void {
  if (exitHooked) return;
  exitHooked = true;
  const cleanAll = (): void => {
    for (const n of [...live]) n.destroySync();
  };
  process.once("exit", cleanAll);
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.once(sig, () => {
      cleanAll();
      process.exit(128 + (sig === "SIGINT" ? 2 : sig === "SIGTERM" ? 15 : 1));
    });
  }
}

/** Options for {@link Network.create}. */
export interface NetworkOptions {
  /** Host names (short: letters and digits, at most 6 characters), e.g. `a`, `b`, `client`. */
  hosts: readonly string[];
}

/**
 * A set of hosts joined by one bridge: namespace `tmh-<pid>-<tag>-<host>` per host and
 * `…-sw` for the bridge; the host side of each veth is `e<tag>-<host>` with the address
 * `<subnet>.<10 + i>/24`.
 */
export class Network {
  /** Random per run: in every name this run creates. */
  readonly tag: string;
  /** First three octets of the run's /24, e.g. `10.213.57`. */
  readonly subnet: string;
  private readonly hosts: readonly string[];
  private readonly created: string[] = [];
  /** Pids started through {@link command} and not known to have exited: killed on destroy. */
  private readonly pids = new Set<number>();
  private destroyed = false;

  private constructor(tag: string, subnet: string, hosts: readonly string[]) {
    this.tag = tag;
    this.subnet = subnet;
    this.hosts = hosts;
  }

  /** Creates the namespaces, the bridge and the veths, and brings everything up. */
  static async create(opts: NetworkOptions): Promise<Network> {
    for (const h of opts.hosts) {
      if (!/^[a-z][a-z0-9]{0,5}$/.test(h)) throw new Error(`host name ${JSON.stringify(h)}: 1–6 lower-case letters or digits`);
    }
    let subnet: string | undefined;
    for (let i = 0; i < 50 && subnet === undefined; i++) {
      const candidate = `10.213.${1 + Math.floor(Math.random() * 254)}`;
      if (!(await subnetInUse(candidate))) subnet = candidate;
    }
    if (subnet === undefined) throw new Error("no free 10.213.x.0/24 on this machine");
    const net = new Network(randomBytes(2).toString("hex"), subnet, opts.hosts);
    hookExit();
    live.add(net);
    try {
      await net.build();
    } catch (err) {
      await net.destroy();
      throw err;
    }
    return net;
  }

  /** The namespace of a host (or `sw` for the bridge's). */
  ns(host: string): string {
    return `${NS_PREFIX}${process.pid}-${this.tag}-${host}`;
  }

  /** The host side of a host's veth, inside its namespace. */
  iface(host: string): string {
    return `e${this.tag}-${host}`;
  }

  /** A host's address. */
  ip(host: string): string {
    const i = this.hosts.indexOf(host);
    if (i < 0) throw new Error(`unknown host ${host}`);
    return `${this.subnet}.${10 + i}`;
  }

  private async build(): Promise<void> {
    const sw = this.ns("sw");
    const bridge = `br${this.tag}`;
    await this.addNamespace(sw);
    await run("ip", ["-n", sw, "link", "add", bridge, "type", "bridge"]);
    await run("ip", ["-n", sw, "link", "set", bridge, "up"]);
    for (const h of this.hosts) {
      const ns = this.ns(h);
      const port = `s${this.tag}-${h}`;
      await this.addNamespace(ns);
      await run("ip", ["-n", sw, "link", "add", port, "type", "veth", "peer", "name", this.iface(h), "netns", ns]);
      await run("ip", ["-n", sw, "link", "set", port, "master", bridge, "up"]);
      await run("ip", ["-n", ns, "addr", "add", `${this.ip(h)}/24`, "dev", this.iface(h)]);
      await run("ip", ["-n", ns, "link", "set", this.iface(h), "up"]);
      // Traffic to the host's own address goes over loopback.
      await run("ip", ["-n", ns, "link", "set", "lo", "up"]);
    }
  }

  private async addNamespace(ns: string): Promise<void> {
    await run("ip", ["netns", "add", ns]);
    this.created.push(ns);
  }

  /**
   * How to spawn `file args` inside a host's namespace, dying with this process
   * (`ip netns exec` and `setpriv` both exec, so the spawned pid is the program's own).
   */
  command(host: string, file: string, args: readonly string[]): HostCommand {
    return { file: "ip", args: ["netns", "exec", this.ns(host), "setpriv", "--pdeathsig", "KILL", "--", file, ...args] };
  }

  /** Registers a pid started from {@link command}, so that destroy kills it. */
  track(pid: number): void {
    this.pids.add(pid);
  }

  /** Forgets a pid that has exited. */
  untrack(pid: number): void {
    this.pids.delete(pid);
  }

  /** Runs a short command inside a host's namespace (with a deadline) and returns its stdout. */
  exec(host: string, file: string, args: readonly string[], timeoutMs = COMMAND_TIMEOUT_MS): Promise<string> {
    return run("ip", ["netns", "exec", this.ns(host), file, ...args], timeoutMs);
  }

  /** Appends one iptables (legacy) rule in a host's namespace: `chain` and the rule's arguments. */
  async drop(host: string, chain: "INPUT" | "OUTPUT", match: readonly string[]): Promise<void> {
    await this.exec(host, "iptables-legacy", ["-w", "5", "-A", chain, ...match, "-j", "DROP"]);
  }

  /** The host's rules, as `iptables -S` prints them (for records and debugging). */
  rules(host: string): Promise<string> {
    return this.exec(host, "iptables-legacy", ["-w", "5", "-S"]);
  }

  /** Removes every rule in a host's namespace (all faults on it heal at once). */
  async flush(host: string): Promise<void> {
    await this.exec(host, "iptables-legacy", ["-w", "5", "-F"]);
  }

  /** Cuts a host off: everything in and out on its veth is dropped (loopback keeps working). */
  async partition(host: string): Promise<void> {
    await this.drop(host, "INPUT", ["-i", this.iface(host)]);
    await this.drop(host, "OUTPUT", ["-o", this.iface(host)]);
  }

  /**
   * Cuts every TCP connection the host's processes make to `port` (on any host, its own
   * included): new ones time out, open ones fall silent. The host's own servers on that port
   * still serve other hosts.
   */
  async cutOutgoing(host: string, port: number): Promise<void> {
    await this.drop(host, "OUTPUT", ["-p", "tcp", "--dport", String(port)]);
    await this.drop(host, "INPUT", ["-p", "tcp", "--sport", String(port)]);
  }

  /**
   * Silences the host's servers on `ports` and its own connections to those ports elsewhere:
   * nothing reaches them, nothing they send leaves (a black hole, not a refusal).
   */
  async blackhole(host: string, ports: readonly number[]): Promise<void> {
    for (const p of ports) {
      await this.drop(host, "INPUT", ["-p", "tcp", "--dport", String(p)]);
      await this.drop(host, "OUTPUT", ["-p", "tcp", "--sport", String(p)]);
      await this.drop(host, "OUTPUT", ["-p", "tcp", "--dport", String(p)]);
      await this.drop(host, "INPUT", ["-p", "tcp", "--sport", String(p)]);
    }
  }

  /**
   * Kills every process still inside the namespaces and deletes them (bridge, veths and rules go
   * with them). Idempotent.
   */
  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    live.delete(this);
    this.killTracked();
    for (const ns of [...this.created].reverse()) {
      killNamespacePidsSync(ns);
      await run("ip", ["netns", "delete", ns]).catch(() => undefined);
    }
  }

  /** {@link destroy} without awaiting anything: for exit and signal handlers. */
  destroySync(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    live.delete(this);
    this.killTracked();
    for (const ns of [...this.created].reverse()) {
      killNamespacePidsSync(ns);
      try {
        runSync("ip", ["netns", "delete", ns]);
      } catch {
        // swept by the next run
      }
    }
    for (const dir of this.dirs) rmSync(dir, { recursive: true, force: true });
  }

  /** Directories removed by {@link destroySync} (the run's data), besides the namespaces. */
  readonly dirs: string[] = [];

  private killTracked(): void {
    for (const pid of this.pids) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
    this.pids.clear();
  }
}
