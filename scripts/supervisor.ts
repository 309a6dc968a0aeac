/**
 * Supervision of the local mesh's child processes (`npm start`, scripts/mesh.ts): a service that
 * exits unexpectedly is restarted with the same command, environment and so the same port, after
 * an exponential backoff with jitter, forever; every exit is announced by one line on stdout and
 * in the service's log, and a small JSON status file shows each service's pid, restart count and
 * last exit. Only {@link Supervisor.stop} ends the children, in reverse order of start.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createWriteStream, mkdirSync, renameSync, writeFileSync, type WriteStream } from "node:fs";
import { dirname, isAbsolute, relative } from "node:path";

/** How long to wait before restarting a service that exited, and when to forgive it. */
export interface BackoffPolicy {
  /** Delay before the first restart after a quiet period. @default 500 */
  initialMs: number;
  /** Largest delay: a crash loop keeps retrying at this pace. @default 30000 */
  maxMs: number;
  /** Growth of the delay per exit in a row. @default 2 */
  multiplier: number;
  /** Share of the delay taken off at random (0–1), so services crashing together spread out. @default 0.2 */
  jitter: number;
  /** A process that stayed up this long starts again from `initialMs` when it exits. @default 30000 */
  resetAfterMs: number;
}

/** The backoff `npm start` uses: 0.5 s doubling to 30 s, forgiven after 30 s up. */
export const DEFAULT_BACKOFF: Readonly<BackoffPolicy> = {
  initialMs: 500,
  maxMs: 30_000,
  multiplier: 2,
  jitter: 0.2,
  resetAfterMs: 30_000,
};

/**
 * The delay before restart number `exitsInARow` + 1 of a run of quick exits (0 for the first):
 * `min(maxMs, initialMs × multiplier^exitsInARow)`, less up to `jitter` of it at random. The
 * jitter only shortens, so delays grow strictly until the cap and never exceed it.
 */
export function restartDelay(exitsInARow: number, policy: Readonly<BackoffPolicy>, random: () => number = Math.random): number {
  const ceiling = Math.min(policy.maxMs, policy.initialMs * policy.multiplier ** exitsInARow);
  return Math.max(1, Math.round(ceiling * (1 - policy.jitter * random())));
}

/** How a child process ended. */
export interface ExitInfo {
  /** Exit code, or null when a signal ended it or it never started. */
  code: number | null;
  /** The signal that ended it, or null. */
  signal: NodeJS.Signals | null;
  /** Why it could not be started (e.g. `spawn etcd ENOENT`), when it could not. */
  error?: string;
  /** When the exit was seen (ISO 8601). */
  at: string;
  /** How long the process had been up, in milliseconds. */
  uptimeMs: number;
}

/** `code 1`, `signal SIGKILL` or `spawn error: …`: an exit as the log lines say it. */
export function describeExit(e: Pick<ExitInfo, "code" | "signal" | "error">): string {
  if (e.error !== undefined) return `spawn error: ${e.error}`;
  if (e.signal !== null) return `signal ${e.signal}`;
  return `code ${String(e.code)}`;
}

/** One service to run and keep running. */
export interface ServiceSpec {
  /** Name in log lines, the status file and its log file, e.g. `worker-1`. */
  name: string;
  /** Executable, e.g. `process.execPath` or `etcd`. */
  command: string;
  args: readonly string[];
  /** The child's whole environment (nothing is added): every restart gets the same. */
  env: NodeJS.ProcessEnv;
  /** Working directory. */
  cwd: string;
  /** File the child's stdout and stderr are appended to, with the supervisor's lines. */
  logFile: string;
  /** The port it serves, shown in the status file (the supervisor does not use it). */
  port?: number;
}

/** Where a supervised service is in its life. */
export type ServiceState =
  /** A process is running. */
  | "running"
  /** The process exited; a restart is scheduled. */
  | "backoff"
  /** The process exited before it was marked ready: not restarted (a failed start). */
  | "failed"
  /** Stopped by {@link Supervisor.stop}. */
  | "stopped";

/** One service in the status file. */
export interface ServiceStatus {
  name: string;
  state: ServiceState;
  /** The running process's pid, or null while none runs. */
  pid: number | null;
  port: number | null;
  /** Whether it was marked ready (healthy once); only ready services are restarted. */
  ready: boolean;
  /** Restarts so far (never reset). */
  restarts: number;
  /** When the current (or last) process started (ISO 8601). */
  startedAt: string | null;
  lastExit: ExitInfo | null;
  /** When the scheduled restart happens (ISO 8601), while in backoff. */
  nextRestartAt: string | null;
}

/** The status file's content. */
export interface SupervisorStatus {
  /** The supervising process. */
  pid: number;
  state: "running" | "stopping" | "stopped";
  updatedAt: string;
  /** Every service, in start order. */
  services: Record<string, ServiceStatus>;
}

/** Options of {@link Supervisor}. */
export interface SupervisorOptions {
  /** JSON file rewritten (atomically) on every change; none when omitted. */
  statusFile?: string;
  /** Overrides of {@link DEFAULT_BACKOFF}. */
  backoff?: Partial<BackoffPolicy>;
  /** How long a service may take to exit after SIGTERM before SIGKILL. @default 15000 */
  stopTimeoutMs?: number;
  /**
   * Restart a service that exits before {@link SupervisedService.markReady}. Off for `npm start`,
   * whose first start fails fast instead. @default false
   */
  restartBeforeReady?: boolean;
  /**
   * Start each child in its own process group, so a terminal's Ctrl-C reaches only the
   * supervising process, which then stops the children in order (each signalled once).
   * @default false
   */
  detached?: boolean;
  /** Where the one-line announcements go. @default a line on stdout */
  out?: (line: string) => void;
  /** Random source of the jitter, in [0, 1). @default Math.random */
  random?: () => number;
}

/** A service the supervisor runs, as its owner sees it. */
export interface SupervisedService {
  readonly name: string;
  readonly state: ServiceState;
  /** The running process's pid, if one runs. */
  readonly pid: number | undefined;
  readonly restarts: number;
  /** The exit that made the start fail (exited before it was marked ready), if it did. */
  readonly failure: ExitInfo | undefined;
  /**
   * Marks the service ready (healthy once): from now on every exit is restarted. Called on a
   * service that already failed, it schedules the restart.
   */
  markReady(): void;
}

const STOP_TIMEOUT_MS = 15_000;
/** How long to wait, after the exit, for the last output of a stopped child to reach its log. */
const OUTPUT_DRAIN_MS = 1_000;

class Service implements SupervisedService {
  state: ServiceState = "running";
  child: ChildProcess | undefined;
  /** Resolves when the current child's exit has been handled. */
  exited: Promise<void> = Promise.resolve();
  /** Resolves when the current child's stdout and stderr are closed. */
  outputClosed: Promise<void> = Promise.resolve();
  ready = false;
  restarts = 0;
  /** Quick exits in a row (each within `resetAfterMs` of its start): the backoff exponent. */
  exitsInARow = 0;
  startedAtMs = 0;
  lastExit: ExitInfo | null = null;
  failure: ExitInfo | undefined;
  nextRestartAtMs: number | undefined;
  timer: NodeJS.Timeout | undefined;
  readonly log: WriteStream;

  constructor(
    readonly spec: ServiceSpec,
    private readonly owner: Supervisor,
  ) {
    mkdirSync(dirname(spec.logFile), { recursive: true });
    this.log = createWriteStream(spec.logFile, { flags: "a" });
    // A log that cannot be written must not take the supervisor down with it.
    this.log.on("error", () => undefined);
  }

  get name(): string {
    return this.spec.name;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  markReady(): void {
    if (this.ready) return;
    this.ready = true;
    if (this.state === "failed" && this.lastExit !== null) {
      this.failure = undefined;
      this.owner.handleExit(this, this.lastExit);
    } else {
      this.owner.writeStatus();
    }
  }

  status(): ServiceStatus {
    return {
      name: this.name,
      state: this.state,
      pid: this.child?.pid ?? null,
      port: this.spec.port ?? null,
      ready: this.ready,
      restarts: this.restarts,
      startedAt: this.startedAtMs === 0 ? null : new Date(this.startedAtMs).toISOString(),
      lastExit: this.lastExit,
      nextRestartAt: this.nextRestartAtMs === undefined ? null : new Date(this.nextRestartAtMs).toISOString(),
    };
  }
}

/**
 * Runs services as child processes and keeps them running: see the module comment. Create one,
 * {@link start} each service (in dependency order), {@link SupervisedService.markReady} each once
 * it is healthy, and {@link stop} at the end.
 */
export class Supervisor {
  private readonly services: Service[] = [];
  private readonly backoff: BackoffPolicy;
  private readonly stopTimeoutMs: number;
  private readonly out: (line: string) => void;
  private readonly random: () => number;
  private state: SupervisorStatus["state"] = "running";
  private stopping: Promise<void> | undefined;
  private statusWriteFailed = false;

  constructor(private readonly opts: SupervisorOptions = {}) {
    this.backoff = { ...DEFAULT_BACKOFF, ...opts.backoff };
    this.stopTimeoutMs = opts.stopTimeoutMs ?? STOP_TIMEOUT_MS;
    this.out = opts.out ?? ((line) => void process.stdout.write(`${line}\n`));
    this.random = opts.random ?? Math.random;
  }

  /** Starts `spec` now and supervises it until {@link stop}. Names must be unique. */
  start(spec: ServiceSpec): SupervisedService {
    if (this.stopping !== undefined) throw new Error(`supervisor: stopping, cannot start ${spec.name}`);
    if (this.services.some((s) => s.name === spec.name)) throw new Error(`supervisor: ${spec.name} is already supervised`);
    const s = new Service(spec, this);
    this.services.push(s);
    this.spawn(s);
    return s;
  }

  /** A snapshot of every service's status (what the status file holds). */
  status(): SupervisorStatus {
    const services: Record<string, ServiceStatus> = {};
    for (const s of this.services) services[s.name] = s.status();
    return { pid: process.pid, state: this.state, updatedAt: new Date().toISOString(), services };
  }

  /**
   * Stops supervising: no restart from now on, then each running child, in reverse order of
   * start, gets SIGTERM, and SIGKILL if it has not exited after `stopTimeoutMs`. Resolves when
   * every child has exited. May be called many times; every call awaits the same stop.
   */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      this.state = "stopping";
      for (const s of this.services) {
        clearTimeout(s.timer);
        s.timer = undefined;
        s.nextRestartAtMs = undefined;
        if (s.child === undefined) s.state = "stopped";
      }
      this.writeStatus();
      for (const s of [...this.services].reverse()) await this.terminate(s);
      this.state = "stopped";
      this.writeStatus();
      await Promise.all(this.services.map((s) => new Promise<void>((res) => s.log.end(res))));
    })();
    return this.stopping;
  }

  /**
   * Sends SIGTERM to every child still running, synchronously: a last resort for a supervising
   * process that is exiting without {@link stop} (e.g. on an uncaught exception).
   */
  terminateAllNow(): void {
    for (const s of this.services) if (s.child !== undefined) s.child.kill("SIGTERM");
  }

  /** Reacts to the exit of `s`'s process: restart it later, or not. @internal */
  handleExit(s: Service, exit: ExitInfo): void {
    if (this.stopping !== undefined) {
      s.state = "stopped";
      this.writeStatus();
      return;
    }
    if (!s.ready && this.opts.restartBeforeReady !== true) {
      s.state = "failed";
      s.failure = exit;
      this.logLine(s, `${s.name} exited (${describeExit(exit)}) after ${seconds(exit.uptimeMs)} s, before it became ready; not restarted`, false);
      this.writeStatus();
      return;
    }
    if (exit.uptimeMs >= this.backoff.resetAfterMs) s.exitsInARow = 0;
    const delay = restartDelay(s.exitsInARow, this.backoff, this.random);
    s.exitsInARow += 1;
    s.restarts += 1;
    let line = `${s.name} exited (${describeExit(exit)}) after ${seconds(exit.uptimeMs)} s; restarting in ${delay} ms (restart ${s.restarts})`;
    const cap = this.backoff.initialMs * this.backoff.multiplier ** (s.exitsInARow - 1) >= this.backoff.maxMs;
    if (cap) line += `; crash loop: ${s.exitsInARow} quick exits in a row, see ${shownPath(s.spec.logFile)}`;
    this.logLine(s, line, true);
    s.state = "backoff";
    s.nextRestartAtMs = Date.now() + delay;
    // Not unref()ed: while every service waits in backoff, this timer keeps the supervisor alive.
    s.timer = setTimeout(() => {
      s.timer = undefined;
      s.nextRestartAtMs = undefined;
      if (this.stopping === undefined) this.spawn(s);
    }, delay);
    this.writeStatus();
  }

  private spawn(s: Service): void {
    const { spec } = s;
    s.startedAtMs = Date.now();
    s.state = "running";
    const child = spawn(spec.command, [...spec.args], {
      cwd: spec.cwd,
      env: spec.env,
      stdio: ["ignore", "pipe", "pipe"],
      detached: this.opts.detached === true,
    });
    s.child = child;
    child.stdout?.pipe(s.log, { end: false });
    child.stderr?.pipe(s.log, { end: false });
    s.outputClosed = new Promise((res) => child.once("close", () => res()));
    let settled = false;
    s.exited = new Promise<void>((res) => {
      const settle = (exit: Omit<ExitInfo, "at" | "uptimeMs">): void => {
        if (settled) return;
        settled = true;
        if (s.child === child) s.child = undefined;
        const now = Date.now();
        s.lastExit = { ...exit, at: new Date(now).toISOString(), uptimeMs: now - s.startedAtMs };
        this.handleExit(s, s.lastExit);
        res();
      };
      child.once("exit", (code, signal) => settle({ code, signal }));
      child.once("error", (err) => {
        // Without a pid the process never started and no "exit" follows; otherwise a failed
        // kill() or the like, which changes nothing about the process.
        if (child.pid === undefined) settle({ code: null, signal: null, error: err.message });
      });
    });
    this.writeStatus();
  }

  private async terminate(s: Service): Promise<void> {
    const child = s.child;
    if (child === undefined) {
      s.state = "stopped";
      return;
    }
    child.kill("SIGTERM");
    const kill = setTimeout(() => child.kill("SIGKILL"), this.stopTimeoutMs);
    await s.exited;
    clearTimeout(kill);
    // The last output can follow the exit by a moment; a grandchild holding the pipes must not
    // hold up the stop, hence the bound.
    let drained: NodeJS.Timeout | undefined;
    await Promise.race([s.outputClosed, new Promise<void>((res) => (drained = setTimeout(res, OUTPUT_DRAIN_MS)))]);
    clearTimeout(drained);
    child.stdout?.unpipe(s.log);
    child.stderr?.unpipe(s.log);
  }

  /** One line in the service's log, and on stdout when `announce`. */
  private logLine(s: Service, line: string, announce: boolean): void {
    s.log.write(`${new Date().toISOString()} supervisor: ${line}\n`);
    if (announce) this.out(line);
  }

  /** Rewrites the status file, if there is one. @internal */
  writeStatus(): void {
    const file = this.opts.statusFile;
    if (file === undefined) return;
    try {
      mkdirSync(dirname(file), { recursive: true });
      const tmp = `${file}.${process.pid}.tmp`;
      writeFileSync(tmp, `${JSON.stringify(this.status(), null, 2)}\n`);
      renameSync(tmp, file);
      this.statusWriteFailed = false;
    } catch (err) {
      // Supervision goes on without its status file; say so once per run of failures.
      if (!this.statusWriteFailed) this.out(`supervisor: cannot write ${file}: ${(err as Error).message}`);
      this.statusWriteFailed = true;
    }
  }
}

/** `path` relative to the working directory when it lies inside it (`.taskmesh/logs/x.log`), else as is. */
export function shownPath(path: string): string {
  const r = relative(process.cwd(), path);
  return r !== "" && !r.startsWith("..") && !isAbsolute(r) ? r : path;
}

function seconds(ms: number): string {
  return (ms / 1000).toFixed(1);
}
