/**
 * Supervision of the local mesh: the supervisor module (scripts/supervisor.ts) on tiny real child
 * processes that crash, then the real `npm start` launcher (scripts/mesh.ts, with its own etcd and
 * Redis, in a temporary data directory on free ports) surviving a kill -9 of a worker and of the
 * gateway, and stopping cleanly on Ctrl-C.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { Etcd3 } from "etcd3";
import { probeHealthz } from "../../lib/health.js";
import type { ServiceRecord, WorkerRecord } from "../../lib/keys.js";
import { Supervisor, restartDelay, type ServiceSpec, type SupervisorStatus } from "../../scripts/supervisor.js";
import { waitFor } from "../support/wait.js";

const ROOT = resolve(import.meta.dirname, "../..");

/** Temporary directories and processes to clean up after each test, whatever happened. */
const dirs: string[] = [];
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), "taskmesh-supervisor-"));
  dirs.push(d);
  return d;
}

/** Whether a process with this pid exists (a zombie counts: it has not been reaped). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

function killQuietly(pid: number | null | undefined, signal: NodeJS.Signals = "SIGKILL"): void {
  if (pid === null || pid === undefined) return;
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

/** A spec running `code` with node: a tiny real child process. */
function nodeChild(name: string, dir: string, code: string, env: NodeJS.ProcessEnv = {}): ServiceSpec {
  return {
    name,
    command: process.execPath,
    args: ["-e", code],
    env: { ...process.env, ...env },
    cwd: dir,
    logFile: join(dir, "logs", `${name}.log`),
  };
}

/** Lines a child wrote to a file, one per start: `<pid> <Date.now()>`. */
function starts(file: string): { pid: number; at: number }[] {
  if (!existsSync(file)) return [];
  return readFileSync(file, "utf8")
    .split("\n")
    .filter((l) => l !== "")
    .map((l) => {
      const [pid, at] = l.split(" ");
      return { pid: Number(pid), at: Number(at) };
    });
}

/** Child code that records its start, then does `then`. */
const recordStart = (then: string): string =>
  `require("fs").appendFileSync(process.env.STARTS, process.pid + " " + Date.now() + "\\n"); ${then}`;

const RESTART_LINE = /^(\S+) exited \((.+?)\) after (\d+\.\d) s; restarting in (\d+) ms \(restart (\d+)\)/;

function parseRestart(line: string): { name: string; how: string; delay: number; restart: number } {
  const m = RESTART_LINE.exec(line);
  if (m === null) throw new Error(`not a restart line: ${line}`);
  return { name: m[1] ?? "", how: m[2] ?? "", delay: Number(m[4]), restart: Number(m[5]) };
}

function supervisorLines(logFile: string): string[] {
  return readFileSync(logFile, "utf8")
    .split("\n")
    .filter((l) => / supervisor: /.test(l))
    .map((l) => l.replace(/^\S+ supervisor: /, ""));
}

describe("restartDelay", () => {
  const policy = { initialMs: 500, maxMs: 30_000, multiplier: 2, jitter: 0.2, resetAfterMs: 30_000 };

  it("doubles from the initial delay up to the cap, and jitter only ever shortens it", () => {
    expect([0, 1, 2, 3, 6, 7, 20].map((n) => restartDelay(n, policy, () => 0))).toEqual([500, 1000, 2000, 4000, 30_000, 30_000, 30_000]);
    expect(restartDelay(0, policy, () => 0.999)).toBe(400);
    expect(restartDelay(10, policy, () => 0.5)).toBe(27_000);
  });
});

// Child processes start slowly on a machine busy with other tests: generous bounds.
describe("Supervisor", { timeout: 60_000 }, () => {
  it("restarts a crashing service with growing delays, a counted restart and one log line each time, and never after stop()", async () => {
    const dir = tempDir();
    const startsFile = join(dir, "starts");
    const lines: string[] = [];
    const backoff = { initialMs: 100, maxMs: 800, multiplier: 2, jitter: 0.2, resetAfterMs: 10_000 };
    const sup = new Supervisor({ statusFile: join(dir, "supervisor.json"), backoff, restartBeforeReady: true, out: (l) => lines.push(l) });
    cleanups.push(() => sup.stop());
    const spec = nodeChild("crasher", dir, recordStart(`console.log("crashing on purpose"); process.exit(3);`), { STARTS: startsFile });
    const svc = sup.start(spec);

    // Stop while a restart is pending (in backoff), after the delay has reached the cap twice.
    const pending = await waitFor(
      () => {
        const s = sup.status().services.crasher;
        return s !== undefined && s.state === "backoff" && s.restarts >= 5 && s.nextRestartAt !== null ? s : undefined;
      },
      { timeoutMs: 40_000, intervalMs: 5, what: "five restarts, the last one pending" },
    );
    await sup.stop();

    const restarts = lines.map(parseRestart);
    expect(restarts.map((r) => r.restart)).toEqual(restarts.map((_, i) => i + 1));
    expect(restarts.length).toBe(pending.restarts);
    expect(svc.restarts).toBe(pending.restarts);
    for (const [i, r] of restarts.entries()) {
      const ceiling = Math.min(backoff.maxMs, backoff.initialMs * 2 ** i);
      expect(r.name).toBe("crasher");
      expect(r.how).toBe("code 3");
      expect(r.delay, `restart ${i + 1}`).toBeGreaterThanOrEqual(Math.floor(ceiling * (1 - backoff.jitter)));
      expect(r.delay, `restart ${i + 1}`).toBeLessThanOrEqual(ceiling);
      if (i > 0 && ceiling < backoff.maxMs) expect(r.delay).toBeGreaterThan(restarts[i - 1]?.delay ?? Infinity);
      // At the cap the line says it is a crash loop.
      expect(lines[i]?.includes("crash loop"), lines[i]).toBe(ceiling >= backoff.maxMs);
    }
    // Each start came at least its announced delay after the one before.
    const seen = starts(startsFile);
    expect(seen.length).toBe(restarts.length); // the pending restart never happened
    for (let i = 1; i < seen.length; i++) {
      expect((seen[i]?.at ?? 0) - (seen[i - 1]?.at ?? 0), `gap before start ${i + 1}`).toBeGreaterThanOrEqual((restarts[i - 1]?.delay ?? 0) - 2);
    }
    // The same lines are in the service's log, next to the child's own output.
    expect(supervisorLines(spec.logFile)).toEqual(lines);
    expect(readFileSync(spec.logFile, "utf8").match(/crashing on purpose/g)?.length).toBe(seen.length);
    const status = JSON.parse(readFileSync(join(dir, "supervisor.json"), "utf8")) as SupervisorStatus;
    expect(status.state).toBe("stopped");
    expect(status.services.crasher).toMatchObject({ state: "stopped", pid: null, restarts: pending.restarts, nextRestartAt: null });
    expect(status.services.crasher?.lastExit).toMatchObject({ code: 3, signal: null });

    // The restart that was pending when stop() was called must not happen. Its absence can only
    // be observed over a window: until well past the time it was due.
    const due = Date.parse(pending.nextRestartAt ?? "");
    await waitFor(() => Date.now() > due + 300, { timeoutMs: 5_000, what: "the cancelled restart's time to pass" });
    expect(starts(startsFile).length).toBe(seen.length);
    expect(lines.length).toBe(restarts.length);
    for (const s of seen) expect(alive(s.pid), `pid ${s.pid}`).toBe(false);
  });

  it("forgets the backoff once a service has stayed up longer than resetAfterMs, and restarts one killed by a signal", async () => {
    const dir = tempDir();
    const startsFile = join(dir, "starts");
    const lines: string[] = [];
    // resetAfterMs well above a loaded machine's node start-up, so the two crashes count as quick.
    const backoff = { initialMs: 100, maxMs: 5_000, multiplier: 2, jitter: 0.2, resetAfterMs: 3_000 };
    const sup = new Supervisor({ backoff, restartBeforeReady: true, out: (l) => lines.push(l) });
    cleanups.push(() => sup.stop());
    // Crashes on its first two starts, then stays up.
    const code = recordStart(
      `const n = require("fs").readFileSync(process.env.STARTS, "utf8").split("\\n").filter(Boolean).length;` +
        `if (n <= 2) process.exit(1); setInterval(() => undefined, 1000);`,
    );
    const svc = sup.start(nodeChild("flaky", dir, code, { STARTS: startsFile }));
    const up = await waitFor(
      () => {
        const s = sup.status().services.flaky;
        return s?.state === "running" && s.restarts === 2 && s.pid !== null && starts(startsFile).length === 3 ? s : undefined;
      },
      { timeoutMs: 30_000, what: "the third start, which stays up" },
    );
    const delays = lines.map(parseRestart).map((r) => r.delay);
    expect(delays.length).toBe(2);
    expect(delays[0]).toBeGreaterThanOrEqual(80);
    expect(delays[0]).toBeLessThanOrEqual(100);
    expect(delays[1]).toBeGreaterThanOrEqual(160);
    expect(delays[1]).toBeLessThanOrEqual(200);
    // Once it has been up longer than resetAfterMs, a kill -9 is restarted after the initial delay.
    await waitFor(() => Date.now() - Date.parse(up.startedAt ?? "") > backoff.resetAfterMs + 100, { what: "uptime past resetAfterMs" });
    process.kill(up.pid ?? 0, "SIGKILL");
    const back = await waitFor(
      () => {
        const s = sup.status().services.flaky;
        return s?.state === "running" && s.restarts === 3 && s.pid !== null && s.pid !== up.pid ? s : undefined;
      },
      { timeoutMs: 20_000, what: "the restart after kill -9" },
    );
    const third = parseRestart(lines[2] ?? "");
    expect(third).toMatchObject({ name: "flaky", how: "signal SIGKILL", restart: 3 });
    expect(third.delay).toBeGreaterThanOrEqual(80);
    expect(third.delay).toBeLessThanOrEqual(100);
    expect(svc.pid).toBe(back.pid);
    await sup.stop();
    expect(alive(back.pid ?? 0)).toBe(false);
  });

  it("does not restart a service that exits before it is marked ready, and restarts it once it is", async () => {
    const dir = tempDir();
    const lines: string[] = [];
    const sup = new Supervisor({ backoff: { initialMs: 50 }, out: (l) => lines.push(l) });
    cleanups.push(() => sup.stop());
    const spec = nodeChild("early", dir, `process.exit(7)`);
    const svc = sup.start(spec);
    const failure = await waitFor(() => svc.failure, { timeoutMs: 20_000, what: "the failed start" });
    expect(failure).toMatchObject({ code: 7, signal: null });
    expect(svc.state).toBe("failed");
    expect(svc.restarts).toBe(0);
    expect(lines).toEqual([]);
    // The log stream writes asynchronously: wait for the line to reach the file.
    const logged = await waitFor(() => supervisorLines(spec.logFile)[0], { what: "the line in the log" });
    expect(logged).toMatch(/^early exited \(code 7\) after \d+\.\d s, before it became ready; not restarted$/);
    // Marked ready after all (it was healthy just before it exited): supervised from then on.
    svc.markReady();
    expect(svc.failure).toBeUndefined();
    expect(svc.restarts).toBe(1);
    expect(lines).toEqual([expect.stringMatching(/^early exited \(code 7\) after \d+\.\d s; restarting in \d+ ms \(restart 1\)$/)]);
    await waitFor(() => svc.restarts >= 2, { timeoutMs: 20_000, what: "the next restart" });
    await sup.stop();
  });

  it("keeps retrying a command that cannot be started at all", async () => {
    const dir = tempDir();
    const lines: string[] = [];
    const sup = new Supervisor({ backoff: { initialMs: 20, maxMs: 50 }, restartBeforeReady: true, out: (l) => lines.push(l) });
    cleanups.push(() => sup.stop());
    sup.start({ name: "missing", command: join(dir, "no-such-program"), args: [], env: {}, cwd: dir, logFile: join(dir, "missing.log") });
    await waitFor(() => lines.length >= 3, { timeoutMs: 20_000, what: "three restarts" });
    await sup.stop();
    for (const l of lines) expect(l).toMatch(/^missing exited \(spawn error: spawn \S+ ENOENT\) after \d+\.\d s; restarting in \d+ ms/);
  });

  it("stops services in reverse order of start, killing one that ignores SIGTERM after the stop timeout", async () => {
    const dir = tempDir();
    const lines: string[] = [];
    const sup = new Supervisor({ statusFile: join(dir, "supervisor.json"), stopTimeoutMs: 500, out: (l) => lines.push(l) });
    cleanups.push(() => sup.stop());
    const stay = `console.log("listening"); setInterval(() => undefined, 1000);`;
    const specs = [
      nodeChild("first", dir, stay),
      nodeChild("stubborn", dir, `process.on("SIGTERM", () => console.log("ignoring SIGTERM")); ${stay}`),
      nodeChild("last", dir, stay),
    ];
    const svcs = specs.map((s) => sup.start(s));
    for (const s of svcs) s.markReady();
    // The stubborn child must have installed its handler before it is signalled.
    await waitFor(() => specs.every((s) => existsSync(s.logFile) && readFileSync(s.logFile, "utf8").includes("listening")), {
      timeoutMs: 20_000,
      what: "every child running",
    });
    const pids = svcs.map((s) => s.pid ?? 0);
    const t0 = Date.now();
    await sup.stop();
    expect(Date.now() - t0).toBeGreaterThanOrEqual(500);
    const status = JSON.parse(readFileSync(join(dir, "supervisor.json"), "utf8")) as SupervisorStatus;
    const exits = ["first", "stubborn", "last"].map((n) => status.services[n]?.lastExit);
    expect(exits.map((e) => e?.signal)).toEqual(["SIGTERM", "SIGKILL", "SIGTERM"]);
    const at = exits.map((e) => Date.parse(e?.at ?? ""));
    expect(at[2]).toBeLessThanOrEqual(at[1] ?? 0);
    expect(at[1]).toBeLessThanOrEqual(at[0] ?? 0);
    expect(readFileSync(specs[1]?.logFile ?? "", "utf8")).toContain("ignoring SIGTERM");
    expect(lines).toEqual([]);
    expect(Object.values(status.services).map((s) => s.state)).toEqual(["stopped", "stopped", "stopped"]);
    for (const pid of pids) expect(alive(pid), `pid ${pid}`).toBe(false);
  });
});

/** The `npm start` launcher running in a temporary data directory, on free ports. */
interface Launcher {
  readonly dir: string;
  readonly child: ChildProcess;
  output(): string;
  readonly exited: Promise<ExitStatus>;
  /** How it exited, once it has. */
  exit(): ExitStatus | undefined;
  status(): SupervisorStatus | undefined;
  /** Every child pid the status file has shown so far (polled every 200 ms, and on demand). */
  seenPids(): Set<number>;
}

interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/**
 * Starts `tsx scripts/mesh.ts` as `npm start` does, in its own process group (as a terminal's
 * foreground job), with nothing of the test run's TASKMESH_* environment: it starts its own etcd
 * and Redis. After the test, whatever is left of it is killed.
 */
function launch(extraEnv: NodeJS.ProcessEnv = {}): Launcher {
  const dir = tempDir();
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("TASKMESH_")) env[k] = v;
  Object.assign(env, {
    TASKMESH_DATA_DIR: dir,
    TASKMESH_MESH_PORTS: "any",
    TASKMESH_PROMETHEUS_TARGETS: join(dir, "prometheus", "targets", "local.json"),
    ...extraEnv,
  });
  const child = spawn(join(ROOT, "node_modules/.bin/tsx"), ["scripts/mesh.ts"], {
    cwd: ROOT,
    env,
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout?.on("data", (b: Buffer) => (out += b.toString()));
  child.stderr?.on("data", (b: Buffer) => (out += b.toString()));
  let exit: ExitStatus | undefined;
  const exited = new Promise<ExitStatus>((res) =>
    child.once("exit", (code, signal) => {
      exit = { code, signal };
      res(exit);
    }),
  );
  const status = (): SupervisorStatus | undefined => {
    const file = join(dir, "supervisor.json");
    return existsSync(file) ? (JSON.parse(readFileSync(file, "utf8")) as SupervisorStatus) : undefined;
  };
  const pids = new Set<number>();
  const track = (): void => {
    for (const s of Object.values(status()?.services ?? {})) if (s.pid !== null) pids.add(s.pid);
  };
  const timer = setInterval(track, 200);
  cleanups.push(async () => {
    clearInterval(timer);
    track();
    if (child.exitCode === null && child.signalCode === null) {
      killQuietly(-(child.pid ?? 0));
      await exited;
    }
    for (const pid of pids) killQuietly(pid);
  });
  return {
    dir,
    child,
    output: () => out,
    exited,
    exit: () => exit,
    status,
    seenPids: () => {
      track();
      return pids;
    },
  };
}

/** Waits for `check`, failing at once with the launcher's output if it exits meanwhile. */
async function whileRunning<T>(l: Launcher, what: string, check: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs: number): Promise<T> {
  let done = false;
  const died = l.exited.then(({ code, signal }) => {
    if (!done) throw new Error(`the launcher exited (${code ?? signal}) while waiting for ${what}:\n${l.output()}`);
    return undefined as T;
  });
  try {
    // Once the race is decided, the loser's polling stops at its next round.
    return await Promise.race([died, waitFor(() => (done ? (true as T) : check()), { timeoutMs, what, intervalMs: 100 })]);
  } catch (err) {
    throw new Error(`${(err as Error).message}\n--- launcher output ---\n${l.output()}`, { cause: err });
  } finally {
    done = true;
  }
}

/** `/healthz` answers 200: over TLS with the launcher's development CA when `ca` is given (internal ports). */
async function healthz(port: number, ca?: Buffer): Promise<boolean> {
  return (await probeHealthz("127.0.0.1", port, ca === undefined ? {} : { ca })) === 200;
}

const SERVICES = ["etcd", "redis", "config", "scheduler", "worker-1", "worker-2", "gateway"];

describe("npm start (scripts/mesh.ts)", () => {
  it(
    "restarts a worker and the gateway killed with -9 on their ports, and stops everything on Ctrl-C",
    async () => {
      const l = launch();
      await whileRunning(l, "taskmesh is up", () => l.output().includes("taskmesh is up."), 90_000);
      const first = l.status();
      expect(first?.state).toBe("running");
      expect(Object.keys(first?.services ?? {})).toEqual(SERVICES);
      for (const name of SERVICES) {
        expect(first?.services[name], name).toMatchObject({ state: "running", ready: true, restarts: 0, lastExit: null });
      }
      const pids = new Set(Object.values(first?.services ?? {}).map((s) => s.pid ?? 0));
      const gatewayPort = first?.services.gateway?.port ?? 0;
      expect(l.output()).toContain(`gateway     http://127.0.0.1:${gatewayPort} `);
      expect(l.output()).toContain(`Logs in ${l.dir}/logs/.`);
      const targets = join(l.dir, "prometheus", "targets", "local.json");
      expect(existsSync(targets)).toBe(true);
      // The internal ports speak mTLS: Prometheus scrapes them with an observer certificate.
      const groups = JSON.parse(readFileSync(targets, "utf8")) as { labels: Record<string, string> }[];
      expect(groups.map((g) => `${g.labels.component}:${g.labels.transport ?? "plain"}`)).toEqual([
        "config:mtls",
        "scheduler:mtls",
        "worker:mtls",
        "gateway:plain",
      ]);
      expect(readdirSync(join(l.dir, "prometheus", "tls")).sort()).toEqual(["ca.crt", "observer-prometheus.crt", "observer-prometheus.key"]);
      const apiKey = readFileSync(join(l.dir, "dev-api-key"), "utf8").trim();
      const api = (path: string): Promise<Response> =>
        fetch(`http://127.0.0.1:${gatewayPort}${path}`, { headers: { Authorization: `Bearer ${apiKey}` } });

      for (const name of ["worker-1", "gateway"]) {
        const before = l.status()?.services[name];
        const port = before?.port ?? 0;
        process.kill(before?.pid ?? 0, "SIGKILL");
        const after = await whileRunning(
          l,
          `${name} restarted`,
          () => {
            const s = l.status()?.services[name];
            return s?.state === "running" && s.pid !== null && s.pid !== before?.pid ? s : undefined;
          },
          20_000,
        );
        pids.add(after.pid ?? 0);
        expect(after).toMatchObject({ restarts: 1, port, lastExit: { code: null, signal: "SIGKILL" } });
        const ca = name === "gateway" ? undefined : readFileSync(join(l.dir, "tls", "ca.crt"));
        await whileRunning(l, `${name} healthy again on port ${port}`, () => healthz(port, ca), 30_000);
        const line = new RegExp(`^${name} exited \\(signal SIGKILL\\) after \\d+\\.\\d s; restarting in \\d+ ms \\(restart 1\\)$`, "m");
        expect(l.output()).toMatch(line);
        const logged = await waitFor(() => supervisorLines(join(l.dir, "logs", `${name}.log`)).length > 0, { what: `${name}'s log line` }).then(() =>
          supervisorLines(join(l.dir, "logs", `${name}.log`)),
        );
        expect(logged).toEqual([expect.stringMatching(line)]);
      }

      // Both re-registered in etcd under their old addresses, which is how the other processes
      // find them again; the restarted gateway still accepts the same bootstrap key.
      const now = l.status();
      const etcd = new Etcd3({ hosts: `127.0.0.1:${now?.services.etcd?.port ?? 0}` });
      try {
        const worker1 = now?.services["worker-1"];
        await whileRunning(
          l,
          "worker-1's new process registered in etcd",
          async () => {
            const w = JSON.parse((await etcd.get("/taskmesh/workers/worker-1").string()) ?? "{}") as Partial<WorkerRecord>;
            return w.pid === worker1?.pid && w.address === `127.0.0.1:${worker1?.port}`;
          },
          20_000,
        );
        const gateway = now?.services.gateway;
        await whileRunning(
          l,
          "the gateway's new process registered in etcd",
          async () => {
            const all = Object.values(await etcd.getAll().prefix("/taskmesh/services/gateway/").strings());
            return all.some((v) => {
              const g = JSON.parse(v) as Partial<ServiceRecord>;
              return g.pid === gateway?.pid && g.address === `127.0.0.1:${gateway?.port}`;
            });
          },
          20_000,
        );
      } finally {
        etcd.close();
      }
      expect((await api("/v1/apikeys")).status).toBe(200);
      for (const name of SERVICES) expect(now?.services[name]?.restarts, name).toBe(["worker-1", "gateway"].includes(name) ? 1 : 0);

      // Ctrl-C: a terminal sends SIGINT to the whole foreground process group.
      const stopAt = l.output().length;
      process.kill(-(l.child.pid ?? 0), "SIGINT");
      const exit = await waitFor(() => l.exit(), { timeoutMs: 45_000, what: "the launcher to exit" });
      expect(exit, l.output()).toEqual({ code: 0, signal: null });
      const tail = l.output().slice(stopAt);
      expect(tail).toContain("stopping the mesh...\nstopped.\n");
      expect(tail).not.toContain("restarting");
      const last = l.status();
      expect(last?.state).toBe("stopped");
      for (const name of SERVICES) expect(last?.services[name], name).toMatchObject({ state: "stopped", pid: null });
      for (const pid of [...pids, ...l.seenPids()]) expect(alive(pid), `pid ${pid}`).toBe(false);
      expect(existsSync(targets)).toBe(false);
    },
    180_000,
  );

  it("fails fast, naming the service and its log, when a service exits before it becomes healthy", async () => {
    const l = launch({ TASKMESH_WORKER_SLOTS: "not-a-number" });
    const exit = await waitFor(() => l.exit(), { timeoutMs: 60_000, what: "the launcher to give up" });
    expect(exit, l.output()).toEqual({ code: 1, signal: null });
    expect(l.output()).toMatch(
      new RegExp(`failed to start the mesh: worker-[12] exited \\(code 1\\) before it became ready; see ${l.dir}/logs/worker-[12]\\.log\\n`),
    );
    expect(l.output()).not.toContain("restarting");
    const status = l.status();
    expect(status?.state).toBe("stopped");
    for (const s of Object.values(status?.services ?? {})) {
      expect(s.state === "stopped" || s.state === "failed", s.name).toBe(true);
      expect(s.pid, s.name).toBeNull();
      expect(s.restarts, s.name).toBe(0);
    }
    expect(l.seenPids().size).toBeGreaterThan(0);
    for (const pid of l.seenPids()) expect(alive(pid), `pid ${pid}`).toBe(false);
    expect(readFileSync(join(l.dir, "logs", "worker-1.log"), "utf8")).toContain("not-a-number");
  }, 90_000);
});
