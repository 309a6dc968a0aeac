import { spawn } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { uniquePrefix } from "../support/ids.js";
import { startMesh, type Mesh } from "../support/mesh.js";
import { freePort } from "../support/ports.js";
import { waitFor } from "../support/wait.js";

const root = join(import.meta.dirname, "../..");
const MAIN = join(root, "cli", "main.ts");

/** A finished CLI process. */
interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** A CLI process still running (for streams). */
interface Running {
  stdout(): string;
  stderr(): string;
  signal(sig: NodeJS.Signals): void;
  done: Promise<Result>;
}

/** Starts the real CLI as its own process (`node --import tsx cli/main.ts …`), killed after `timeoutMs`. */
function start(command: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs = 20_000): Running {
  const child = spawn(command, args, { cwd: root, env, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (b: Buffer) => (stdout += b.toString()));
  child.stderr.on("data", (b: Buffer) => (stderr += b.toString()));
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  const done = new Promise<Result>((resolve, reject) => {
    child.once("error", reject);
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr: signal === null ? stderr : `${stderr}(ended by ${signal})` });
    });
  });
  return { stdout: () => stdout, stderr: () => stderr, signal: (s) => child.kill(s), done };
}

// The tests touch disjoint tasks, namespaces, keys and schedules, so they run side by side: most of
// their time is spent starting CLI processes.
describe.concurrent("the taskmesh CLI against a real mesh", () => {
  let mesh: Mesh;
  let tmp: string;
  let env: NodeJS.ProcessEnv;

  /** Runs `taskmesh <args>` with the mesh's address and admin key in the environment. */
  const tm = (args: string[], extraEnv: NodeJS.ProcessEnv = {}): Promise<Result> =>
    start(process.execPath, ["--import", "tsx", MAIN, ...args], { ...env, ...extraEnv }).done;
  const json = <T = Record<string, unknown>>(r: Result): T => {
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    return JSON.parse(r.stdout) as T;
  };

  beforeAll(async () => {
    tmp = await mkdtemp(join(tmpdir(), "taskmesh-cli-"));
    mesh = await startMesh({
      etcdEndpoint: inject("etcdEndpoint"),
      redisUrl: inject("redisUrl"),
      prefix: uniquePrefix("cli"),
      workers: 1,
      config: true,
    });
    const { TASKMESH_ADDR: _a, TASKMESH_API_KEY: _k, ...rest } = process.env;
    env = {
      ...rest,
      TASKMESH_ADDR: mesh.gateway.address,
      TASKMESH_API_KEY: mesh.apiKey,
      // Never the real user's config file.
      TASKMESH_CONFIG: join(tmp, "absent.json"),
      NO_COLOR: "1",
    };
  });
  afterAll(async () => {
    await mesh?.close();
    if (tmp !== undefined) await rm(tmp, { recursive: true, force: true });
  });

  it("submit --watch draws the progress to 100%, prints the result and exits 0; get, ls and watch agree", async () => {
    const payload = JSON.stringify({ data: [{ x: 1 }, { x: 2 }, { x: 3 }, { x: 4 }], item_delay_ms: 150 });
    const r = await tm(["submit", "data_processing", "--payload", payload, "--watch", "--label", "origin=cli", "--priority", "high"]);
    expect(r.code, r.stderr).toBe(0);
    // Not a terminal: one line per progress change, no carriage returns.
    expect(r.stderr).not.toContain("\r");
    const bars = r.stderr.split("\n").filter((l) => /^\[[#-]+\]\s+\d+%/.test(l));
    expect(bars.map((l) => Number(/(\d+)%/.exec(l)?.[1]))).toEqual(expect.arrayContaining([25, 50, 75, 100]));
    expect(bars.at(-1)).toMatch(/\[#{30}\] 100%  processed 4\/4/);
    expect(r.stderr).toContain("→ SUCCEEDED");
    expect(r.stdout).toMatch(/status:\s+SUCCEEDED/);
    expect(r.stdout).toMatch(/^result:\s+\{"processed_data":\[\{"x":2\},.*"items_processed":4\}$/m);
    const id = /^id:\s+(\S+)$/m.exec(r.stdout)?.[1] ?? "";
    expect(id).toMatch(/^[0-9A-Z]{26}$/);

    const [got, table, watched] = await Promise.all([
      tm(["get", id, "--json"]),
      tm(["ls", "--label", "origin=cli", "--status", "succeeded", "--limit", "10"]),
      tm(["--json", "watch", id]),
    ]);
    const task = json<{ id: string; status: string; priority: string; result: { items_processed: number; processed_data: { x: number }[] } }>(got);
    expect(task).toMatchObject({ id, status: "TASK_STATUS_SUCCEEDED", priority: "PRIORITY_HIGH" });
    expect(task.result.processed_data).toEqual([{ x: 2 }, { x: 4 }, { x: 6 }, { x: 8 }]);
    expect(table.code).toBe(0);
    expect(table.stdout.split("\n")[0]).toMatch(/^ID\s+TYPE\s+STATUS\s+QUEUE/);
    expect(table.stdout).toMatch(new RegExp(`${id}\\s+data_processing\\s+SUCCEEDED\\s+default\\s+HIGH`));
    // watch replays the history of a finished task (one JSON event per line), then exits with its outcome.
    expect(watched.code).toBe(0);
    const events = watched.stdout.trim().split("\n").map((l) => JSON.parse(l) as { sequence: string; task: { status: string; progress?: number } });
    expect(events.map((e) => Number(e.sequence))).toEqual(events.map((_, i) => i + 1));
    expect(events.at(-1)?.task).toMatchObject({ status: "TASK_STATUS_SUCCEEDED", progress: 100 });
  });

  it("submit prints the id; cancel and retry change the task; watch follows a retried task; a failed task exits 1", async () => {
    const submitted = await tm(["submit", "sleep", "--payload", '{"ms":100}', "--delay", "1m", "--max-attempts", "2", "--timeout", "5s"]);
    expect(submitted.code, submitted.stderr).toBe(0);
    const id = submitted.stdout.trim();
    expect(id).toMatch(/^[0-9A-Z]{26}$/);
    const cancelled = await tm(["cancel", id, "--reason", "changed my mind"]);
    expect(cancelled).toMatchObject({ code: 0, stdout: `${id} CANCELLED\n` });
    const retried = await tm(["retry", id]);
    expect(retried.code, retried.stderr).toBe(0);
    expect(retried.stdout).toMatch(new RegExp(`^${id} (QUEUED|RUNNING|SUCCEEDED)`));
    // The history holds the cancellation, then the re-run to its end.
    const watched = await tm(["watch", id]);
    expect(watched.code, watched.stdout).toBe(0);
    expect(watched.stdout).toMatch(/#1\s+DELAYED[\s\S]*→ CANCELLED[\s\S]*RUNNING → SUCCEEDED/);

    const failed = await tm(["submit", "fail", "--payload", '{"message":"boom","retryable":false}', "--watch"]);
    expect(failed.code).toBe(1);
    expect(failed.stdout).toMatch(/status:\s+FAILED/);
    expect(failed.stdout).toContain("boom");
    expect(failed.stderr).toContain("→ FAILED");
  });

  it("exits with the documented code for each kind of error, printing error: <message> and no stack", async () => {
    const port = await freePort();
    const [badKey, unknownId, badFlag, badType, unavailable] = await Promise.all([
      // The flag wins over the (good) key in the environment.
      tm(["ls", "--api-key", "tm_wrong"]),
      tm(["get", "01ARZ3NDEKTSV4RRFFQ69G5FAV"]),
      tm(["ls", "--bogus"]),
      tm(["submit", "no_such_type", "--payload", "{}"]),
      tm(["ls", "--addr", `127.0.0.1:${port}`]),
    ]);
    const expectError = (r: Result, code: number, text: RegExp): void => {
      expect(r.code, r.stderr).toBe(code);
      expect(r.stdout).toBe("");
      expect(r.stderr).toMatch(/^error: /);
      expect(r.stderr).toMatch(text);
      expect(r.stderr).not.toMatch(/\n\s+at /);
    };
    expectError(badKey, 4, /\[unauthenticated\]/);
    expectError(unknownId, 3, /\[not_found\]/);
    expectError(badFlag, 2, /Unknown option '--bogus'/);
    expectError(badType, 6, /\[invalid_argument\] type: unknown task type "no_such_type"/);
    expectError(unavailable, 5, /\[unavailable\]/);
  });

  it("workers and status show the mesh", async () => {
    const [workers, status] = await Promise.all([tm(["workers", "--json"]), tm(["status"])]);
    const worker = mesh.workers[0];
    expect(json<{ workers: { id: string; address: string; slots: number; taskTypes: string[] }[] }>(workers).workers).toEqual([
      expect.objectContaining({ id: worker?.name, address: worker?.address, slots: 10, taskTypes: expect.arrayContaining(["data_processing"]) }),
    ]);
    expect(status.code, status.stderr).toBe(0);
    expect(status.stdout).toMatch(/SCHEDULERS\nID\s+ADDRESS\s+ROLE\n\S+\s+127\.0\.0\.1:\d+\s+leader\n/);
    expect(status.stdout).toMatch(new RegExp(`WORKERS\\nID\\s+ADDRESS\\s+SLOTS\\s+TYPES\\n${worker?.name}\\s+${worker?.address}\\s+\\d+/10\\s`));
    // Queues appear once they have held tasks (the other tests submit some meanwhile).
    expect(status.stdout).toMatch(/QUEUES\n(NAME\s+QUEUED\s+RUNNING\s+DELAYED\s+RETRY_WAIT\s+DEAD\s+OLDEST QUEUED\s+PAUSED\n|$)/);
  });

  it("config set, get, history, rollback, gray release and watch", async ({ onTestFinished }) => {
    const ns = `cli-${uniquePrefix("ns")}`;
    const first = json<{ revision: string }>(await tm(["--json", "config", "set", ns, '{"level":1}']));
    // The watcher prints the current document first: once it has, it is connected.
    const watcher = start(process.execPath, ["--import", "tsx", MAIN, "config", "watch", ns], env, 90_000);
    onTestFinished(() => watcher.signal("SIGKILL"));
    // (A new node process compiling the CLI: seconds on a busy machine.)
    await waitFor(() => watcher.stdout().includes('{"level":1}'), { timeoutMs: 30_000, what: "config watch connected" });
    const file = join(tmp, "doc.json");
    await writeFile(file, JSON.stringify({ level: 2, name: "two" }));
    const second = await tm(["config", "set", ns, `@${file}`, "--expected-revision", first.revision]);
    expect(second.code, second.stderr).toBe(0);
    const rev2 = /revision (\d+)/.exec(second.stdout)?.[1] ?? "";
    expect(second.stdout).toBe(`${ns}: stored as revision ${rev2}\n`);

    const [stale, got, history] = await Promise.all([
      // A stale compare-and-set is refused (and is none of the special codes).
      tm(["config", "set", ns, '{"level":9}', "--expected-revision", first.revision]),
      tm(["config", "get", ns]),
      tm(["config", "history", ns]),
    ]);
    expect(stale.code).toBe(7);
    expect(stale.stderr).toMatch(/^error: \[(failed_precondition|aborted)\]/);
    expect(got.stdout).toMatch(new RegExp(`revision:\\s+${rev2}\\n`));
    expect(got.stdout).toContain('"name": "two"');
    expect(history.stdout).toMatch(new RegExp(`^REVISION\\s+UPDATED\\s+AUTHOR\\s+GRAY\\s+VALUE\\n${rev2}\\s.*\\n${first.revision}\\s`));

    const rolled = await tm(["config", "rollback", ns, first.revision]);
    expect(rolled.code, rolled.stderr).toBe(0);
    expect(rolled.stdout).toMatch(new RegExp(`^${ns}: revision ${first.revision} restored as revision \\d+\\n$`));
    const gray = await tm(["config", "set", ns, '{"level":3}', "--gray", "canary=true"]);
    expect(gray.stdout).toContain("(gray: canary=true)");
    expect((await tm(["config", "promote", ns])).code).toBe(0);
    const abandon = await tm(["config", "abandon", ns]);
    expect(abandon.code).toBe(3);

    // The watcher saw the current document, then every change, until Ctrl-C.
    const puts = (): string[] => watcher.stdout().split("\n").filter((l) => new RegExp(`PUT\\s+${ns}\\s+rev \\d+`).test(l));
    // level 1 (current), level 2, the rollback to level 1, the gray level 3 and its promotion.
    await waitFor(() => puts().length >= 5, { timeoutMs: 15_000, what: "config watch output" }).catch((err: unknown) => {
      throw new Error(`config watch printed:\n${watcher.stdout()}\n${watcher.stderr()}`, { cause: err });
    });
    watcher.signal("SIGINT");
    const w = await watcher.done;
    expect(w.code).toBe(130);
    expect(puts().map((l) => l.replace(/^.*rev \d+\s+/, ""))).toEqual([
      '{"level":1}',
      '{"level":2,"name":"two"}',
      '{"level":1}',
      '(gray: canary=true)  {"level":3}',
      '{"level":3}',
    ]);
  });

  it("keys create, ls and revoke; a key's scopes limit what it may do", async () => {
    const created = json<{ apiKey: { id: string; tenant: string; scopes: string[] }; secret: string }>(
      await tm(["keys", "create", "--tenant", "acme", "--scope", "tasks:read", "--scope", "tasks:write", "--description", "cli test", "--json"]),
    );
    expect(created.apiKey).toMatchObject({ tenant: "acme", scopes: ["tasks:read", "tasks:write"] });
    const asAcme = { TASKMESH_API_KEY: created.secret };
    const [listed, own, admin] = await Promise.all([
      tm(["keys", "ls"]),
      tm(["submit", "noop"], asAcme),
      tm(["workers"], asAcme),
    ]);
    expect(listed.stdout).toMatch(new RegExp(`${created.apiKey.id}\\s+acme\\s+tasks:read,tasks:write\\s+\\S+\\s+cli test`));
    expect(listed.stdout).not.toContain(created.secret);
    expect(own.code, own.stderr).toBe(0);
    expect(admin.code).toBe(4);
    expect(admin.stderr).toMatch(/^error: \[permission_denied\]/);

    expect(await tm(["keys", "revoke", created.apiKey.id])).toMatchObject({ code: 0, stdout: `${created.apiKey.id}: revoked\n` });
    await waitFor(async () => (await tm(["get", own.stdout.trim()], asAcme)).code === 4, { timeoutMs: 10_000, what: "revoked key refused" });
  });

  it("schedules create, ls, get, pause, resume and delete", async () => {
    const [every, cronRun] = await Promise.all([
      tm(["schedules", "create", "--every", "1h", "noop", "--label", "from=cli", "--payload", '{"k":1}']),
      tm(["schedules", "create", "--cron", "0 9 * * 1-5", "--tz", "Europe/Berlin", "noop", "--json"]),
    ]);
    expect(every.code, every.stderr).toBe(0);
    const id = every.stdout.trim();
    const cron = json<{ id: string; cron: string; timeZone: string }>(cronRun);
    expect(cron).toMatchObject({ cron: "0 9 * * 1-5", timeZone: "Europe/Berlin" });
    const [listed, got, paused] = await Promise.all([
      tm(["schedules", "ls"]),
      tm(["schedules", "get", id, "--json"]),
      tm(["schedules", "pause", cron.id]),
    ]);
    expect(listed.stdout).toMatch(new RegExp(`${id}\\s+every 1h\\s+noop\\s+no`));
    expect(listed.stdout).toMatch(new RegExp(`${cron.id}\\s+cron "0 9 \\* \\* 1-5" \\(Europe/Berlin\\)\\s+noop`));
    expect(json<{ interval: string; task: { labels: Record<string, string>; payload: unknown } }>(got)).toMatchObject({
      interval: "3600s",
      task: { labels: { from: "cli" }, payload: { k: 1 } },
    });
    expect(paused.stdout).toMatch(/paused:\s+yes/);
    const [resumed, deleted] = await Promise.all([tm(["schedules", "resume", cron.id]), tm(["schedules", "delete", id])]);
    expect(resumed.stdout).toMatch(/paused:\s+no/);
    expect(deleted).toMatchObject({ code: 0, stdout: `${id}: deleted\n` });
    const [gone] = await Promise.all([tm(["schedules", "get", id]), tm(["schedules", "delete", cron.id])]);
    expect(gone.code).toBe(3);
  });

  it("reads the address and key from the config file, below the environment; bin/taskmesh runs it", async () => {
    const file = join(tmp, "config.json");
    await writeFile(file, JSON.stringify({ addr: mesh.gateway.address, apiKey: mesh.apiKey }));
    const fromFile = { TASKMESH_CONFIG: file, TASKMESH_ADDR: "", TASKMESH_API_KEY: "" };
    // The shim, run through its shebang as `npm link` would.
    const shim = start(join(root, "bin", "taskmesh"), ["workers", "--json"], {
      ...env,
      ...fromFile,
      PATH: `${dirname(process.execPath)}:${env.PATH ?? ""}`,
    }).done;
    const [viaShimAndFile, envWins] = await Promise.all([shim, tm(["workers"], { ...fromFile, TASKMESH_API_KEY: "tm_wrong" })]);
    expect(json(viaShimAndFile)).toHaveProperty("workers");
    expect(envWins.code).toBe(4);
  });
});
