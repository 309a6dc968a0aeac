/**
 * The deployment files checked by the tools that consume them: promtool (Prometheus config,
 * alert rules and their unit tests, a live /metrics page), Debian's docker-compose (the compose
 * file), and the Grafana dashboard's queries (valid PromQL, only metrics taskmesh exports).
 *
 * Needs the Debian packages `prometheus` (promtool) and `docker-compose` (which depends on
 * `python3-yaml`, used here to read YAML as JSON). A missing binary fails the test.
 */
import { execFile } from "node:child_process";
import { copyFile, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Health } from "../../gen/grpc/health/v1/health_pb.js";
import { silentLogger } from "../../lib/logger.js";
import { SERVICE_NODE_FLAGS } from "../../lib/node-flags.js";
import {
  METRIC_NAMES,
  breakerMetrics,
  configClientMetrics,
  etcdCallMetrics,
  createRegistry,
  queueMetrics,
  rpcMetrics,
  schedulerMetrics,
  workerMetrics,
} from "../../lib/metrics.js";
import { startServer, type RpcServer } from "../../lib/server.js";
import { DevCa } from "../../lib/dev-ca.js";
import {
  copyObserverCertificate,
  prometheusTargetGroups,
  removePrometheusTargets,
  writePrometheusTargets,
} from "../../scripts/prometheus-targets.js";

const ROOT = resolve(import.meta.dirname, "../..");
const PROM = join(ROOT, "deploy/prometheus");
const GRAFANA = join(ROOT, "deploy/grafana");
/** Debian's interpreter, which has python3-yaml (the `python3` on PATH may be another one). */
const PYTHON = "/usr/bin/python3";

/**
 * Metrics the alerts and dashboard use before lib/metrics.ts exports them. Remove a name once
 * METRIC_NAMES has it (the gateway's breaker gauge is being added by the lead).
 */
const PENDING_METRICS = new Set<string>();
/** Series Prometheus itself makes for every target. */
const PROMETHEUS_SERIES = new Set(["up", "scrape_duration_seconds", "scrape_samples_scraped"]);

interface ToolResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs a command-line tool asynchronously (a synchronous call would block the in-process server
 * it may talk to) and returns its exit code and output without throwing on a non-zero exit. A
 * missing binary or a timeout throws: the test must fail, not skip.
 */
function tool(
  cmd: string,
  args: string[],
  opts: { input?: string; env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number } = {},
): Promise<ToolResult> {
  return new Promise((res, rej) => {
    const child = execFile(
      cmd,
      args,
      { cwd: opts.cwd ?? ROOT, env: opts.env ?? process.env, timeout: opts.timeoutMs ?? 30_000, maxBuffer: 16 * 1024 * 1024 },
      (err, stdout, stderr) => {
        if (err === null) return res({ code: 0, stdout, stderr });
        if (typeof err.code === "number" && err.killed !== true) return res({ code: err.code, stdout, stderr });
        const hint = err.code === "ENOENT" ? ` (not installed? see test/integration/deploy.test.ts header)` : "";
        rej(new Error(`${cmd} ${args.join(" ")} failed: ${err.message}${hint}\n${stdout}\n${stderr}`));
      },
    );
    // A tool that exits without reading its input closes the pipe: not an error of the test.
    child.stdin?.on("error", () => undefined);
    child.stdin?.end(opts.input ?? "");
  });
}

/** Reads a YAML file as JSON through python3-yaml (no YAML parser among the npm dependencies). */
async function readYaml(file: string): Promise<unknown> {
  const r = await tool(PYTHON, ["-c", "import sys, json, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)", file]);
  if (r.code !== 0) throw new Error(`cannot read ${file} as YAML: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

function expectOk(r: ToolResult, what: string): void {
  expect(r.code, `${what}\n${r.stdout}\n${r.stderr}`).toBe(0);
}

const PROMQL_WORDS = new Set(["by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"]);

/**
 * The metric names a PromQL expression selects: identifiers left after removing strings, label
 * matchers, ranges and grouping label lists, that are neither function calls, keywords nor the
 * unit of a number (`5m`).
 */
function metricNames(expr: string): string[] {
  const s = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""')
    .replace(/\{[^}]*\}/g, " ")
    .replace(/\[[^\]]*\]/g, " ")
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, " ");
  const names = new Set<string>();
  for (const m of s.matchAll(/[a-zA-Z_:][a-zA-Z0-9_:]*/g)) {
    const word = m[0];
    const before = s[m.index - 1] ?? "";
    if (/[0-9.]/.test(before)) continue; // 1e3, 5m
    if (s.slice(m.index + word.length).trimStart().startsWith("(")) continue; // a function
    if (PROMQL_WORDS.has(word.toLowerCase())) continue;
    names.add(word);
  }
  return [...names];
}

/** Grafana's variables replaced by values that keep the expression valid PromQL. */
function withoutGrafanaVariables(expr: string): string {
  return expr
    .replace(/\$__rate_interval|\$__interval|\$__range/g, "1m")
    .replace(/\$\{?[a-zA-Z_]+\}?/g, ".*");
}

/** A registry holding every metric taskmesh defines, with a value in each. */
function fullRegistry(service: string) {
  const registry = createRegistry(service);
  const worker = workerMetrics(registry);
  worker.observeSlots(() => ({ slots: 10, used: 3 }));
  worker.started.inc({ type: "noop" });
  worker.finished.inc({ outcome: "succeeded" });
  worker.finished.inc({ outcome: "failed" });
  const scheduler = schedulerMetrics(registry);
  scheduler.submitted.inc(2);
  scheduler.dispatched.inc({ queue: "default" });
  scheduler.requeued.inc({ reason: "lease_expired" });
  scheduler.leader.set(1);
  scheduler.workers.set(2);
  scheduler.attemptsFinished.inc({ type: "noop", outcome: "succeeded" });
  scheduler.runSeconds.observe({ type: "noop" }, 0.002);
  scheduler.queueWaitSeconds.observe({ queue: "default" }, 0.001);
  scheduler.redisCallSeconds.observe({ op: "Claim" }, 0.0003);
  etcdCallMetrics(registry).observe({ op: "PutConfig" }, 0.004);
  breakerMetrics(registry, () => [{ upstream: "scheduler", replica: "127.0.0.1:8081", open: false }]);
  queueMetrics(registry, async () => [
    { name: "default", queued: 3n, running: 1n, delayed: 0n, retryWait: 1n, dead: 2n, oldestQueuedAgeMs: 1500, paused: false },
    { name: "reports", queued: 0n, running: 0n, delayed: 4n, retryWait: 0n, dead: 0n, oldestQueuedAgeMs: 0, paused: true },
  ]);
  const config = configClientMetrics(registry);
  config.appliedRevision.set({ namespace: "worker" }, 7);
  config.connected.set(1);
  rpcMetrics(registry);
  return registry;
}

/** Every metric name a scrape of a taskmesh process can show, and which of them are histograms. */
async function knownMetrics(): Promise<{ names: Set<string>; histograms: Set<string> }> {
  const metrics = await fullRegistry("probe").getMetricsAsJSON();
  const names = new Set<string>([...Object.values(METRIC_NAMES), ...PENDING_METRICS, ...PROMETHEUS_SERIES]);
  const histograms = new Set<string>();
  for (const m of metrics) {
    names.add(m.name);
    if (String(m.type) === "histogram" || String(m.type) === "summary") histograms.add(m.name);
  }
  return { names, histograms };
}

function unknownNames(exprs: string[], known: { names: Set<string>; histograms: Set<string> }): string[] {
  const unknown = new Set<string>();
  for (const expr of exprs) {
    for (const name of metricNames(expr)) {
      const base = name.replace(/_(bucket|sum|count)$/, "");
      if (known.names.has(name) || (base !== name && known.histograms.has(base))) continue;
      unknown.add(`${name} (in ${expr.trim().slice(0, 80)}...)`);
    }
  }
  return [...unknown];
}

interface AlertRule {
  alert?: string;
  record?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

async function alertRules(): Promise<AlertRule[]> {
  const doc = (await readYaml(join(PROM, "alerts.yml"))) as { groups: { name: string; rules: AlertRule[] }[] };
  return doc.groups.flatMap((g) => g.rules);
}

interface Panel {
  id: number;
  type: string;
  title: string;
  datasource?: { type?: string; uid?: string };
  targets?: { expr?: string; refId?: string; datasource?: { type?: string } }[];
  gridPos: { x: number; y: number; w: number; h: number };
  panels?: Panel[];
}

interface Dashboard {
  uid: string;
  title: string;
  panels: Panel[];
  templating: { list: { name: string; type: string; query: unknown; current?: { value?: unknown } }[] };
}

async function dashboard(): Promise<Dashboard> {
  return JSON.parse(await readFile(join(GRAFANA, "dashboards/taskmesh.json"), "utf8")) as Dashboard;
}

/** Every panel, rows' nested panels included. */
function allPanels(d: Dashboard): Panel[] {
  return d.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
}

function dashboardExprs(d: Dashboard): string[] {
  const exprs = allPanels(d).flatMap((p) => (p.targets ?? []).map((t) => t.expr ?? ""));
  for (const v of d.templating.list) {
    if (v.type !== "query") continue;
    const q = typeof v.query === "string" ? v.query : (v.query as { query: string }).query;
    // label_values(metric, label) → the metric must exist too.
    const m = /label_values\(\s*([^,)]+)/.exec(q);
    if (m?.[1] !== undefined) exprs.push(m[1]);
  }
  return exprs;
}

/**
 * A copy of deploy/prometheus (config, alert rules) in a temporary directory, with the `tls/`
 * files the mTLS scrape job reads made by a development CA, as `npm start` and compose provide.
 */
async function prometheusDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "taskmesh-prom-"));
  await mkdir(join(dir, "targets"));
  await copyFile(join(PROM, "prometheus.yml"), join(dir, "prometheus.yml"));
  await copyFile(join(PROM, "alerts.yml"), join(dir, "alerts.yml"));
  await copyObserverCertificate(await DevCa.open(join(dir, "ca")), join(dir, "tls"));
  return dir;
}

describe("Prometheus configuration (promtool)", () => {
  it("checks prometheus.yml and the rule file it loads", async () => {
    const dir = await prometheusDir();
    try {
      const r = await tool("promtool", ["check", "config", join(dir, "prometheus.yml")]);
      expectOk(r, "promtool check config");
      expect(r.stdout).toContain("SUCCESS: 1 rule files found");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("accepts the compose targets and a targets file written by the launcher, with no warning", async () => {
    const dir = await prometheusDir();
    try {
      for (const f of await readdir(join(PROM, "compose-targets"))) {
        await copyFile(join(PROM, "compose-targets", f), join(dir, "targets", f));
      }
      await writePrometheusTargets(
        join(dir, "targets", "local.json"),
        [
          { component: "gateway", address: "127.0.0.1:8080" },
          { component: "worker", address: "127.0.0.1:8090", transport: "mtls" },
          { component: "worker", address: "[::1]:8091", transport: "mtls" },
        ],
        { mesh: "local" },
      );
      const r = await tool("promtool", ["check", "config", join(dir, "prometheus.yml")]);
      expectOk(r, "promtool check config with targets");
      expect(`${r.stdout}${r.stderr}`).not.toMatch(/WARNING|FAILED/);
      // Nothing but the two target files is left behind (the temporary file was renamed).
      expect((await readdir(join(dir, "targets"))).sort()).toEqual(["compose.json", "local.json"]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("writes file_sd target groups per component and rejects what Prometheus would not scrape", async () => {
    expect(
      prometheusTargetGroups(
        [
          { component: "scheduler", address: "127.0.0.1:8081" },
          { component: "worker", address: "127.0.0.1:8090" },
          { component: "worker", address: "127.0.0.1:8091" },
          { component: "worker", address: "127.0.0.1:8090" },
        ],
        { mesh: "local" },
      ),
    ).toEqual([
      { targets: ["127.0.0.1:8081"], labels: { mesh: "local", component: "scheduler" } },
      { targets: ["127.0.0.1:8090", "127.0.0.1:8091"], labels: { mesh: "local", component: "worker" } },
    ]);
    expect(() => prometheusTargetGroups([{ component: "worker", address: "http://127.0.0.1:8090" }])).toThrow(/not host:port/);
    expect(() => prometheusTargetGroups([{ component: "worker", address: "127.0.0.1" }])).toThrow(/not host:port/);
    expect(() => prometheusTargetGroups([{ component: "worker", address: "w:70000" }])).toThrow(/not host:port/);
    expect(() => prometheusTargetGroups([], { service: "x" })).toThrow(/reserved/);
    expect(() => prometheusTargetGroups([], { __meta: "x" })).toThrow(/reserved/);

    const dir = await mkdtemp(join(tmpdir(), "taskmesh-targets-"));
    try {
      const file = join(dir, "nested", "local.json");
      await writePrometheusTargets(file, [{ component: "config", address: "127.0.0.1:8082" }]);
      expect(JSON.parse(await readFile(file, "utf8"))).toEqual([{ targets: ["127.0.0.1:8082"], labels: { component: "config" } }]);
      await removePrometheusTargets(file);
      await removePrometheusTargets(file);
      expect(await readdir(join(dir, "nested"))).toEqual([]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("lists every compose service in the compose targets, at the port it serves", async () => {
    const groups = JSON.parse(await readFile(join(PROM, "compose-targets/compose.json"), "utf8")) as {
      targets: string[];
      labels: Record<string, string>;
    }[];
    const targets = groups.flatMap((g) => g.targets.map((t) => `${g.labels.component}=${t}`)).sort();
    expect(targets).toEqual(
      [
        "config=config:8082",
        "gateway=gateway:8080",
        "scheduler=scheduler-1:8081",
        "scheduler=scheduler-2:8081",
        "worker=worker-1:8090",
        "worker=worker-2:8090",
      ].sort(),
    );
    for (const g of groups) expect(Object.keys(g.labels)).not.toContain("service");
  });
});

describe("alert rules (promtool)", () => {
  it("are valid", async () => {
    const r = await tool("promtool", ["check", "rules", "deploy/prometheus/alerts.yml"]);
    expectOk(r, "promtool check rules");
  });

  it("pass their unit tests", async () => {
    const r = await tool("promtool", ["test", "rules", "deploy/prometheus/alerts.test.yml"], { timeoutMs: 60_000 });
    expectOk(r, "promtool test rules");
    expect(r.stdout).toContain("SUCCESS");
  });

  it("each have a duration, a severity, a summary and a description, and a test that fires them", async () => {
    const rules = await alertRules();
    const names = rules.map((r) => r.alert ?? r.record ?? "");
    for (const required of [
      "TaskmeshQueueBacklogOld",
      "TaskmeshNoWorkers",
      "TaskmeshTaskFailureRatioHigh",
      "TaskmeshCircuitBreakerOpen",
      "TaskmeshSchedulerNoLeader",
    ]) {
      expect(names).toContain(required);
    }
    const tests = (await readYaml(join(PROM, "alerts.test.yml"))) as {
      tests: { alert_rule_test?: { alertname: string; exp_alerts?: unknown[] }[] }[];
    };
    const fired = new Set(
      tests.tests.flatMap((t) => (t.alert_rule_test ?? []).filter((a) => (a.exp_alerts ?? []).length > 0).map((a) => a.alertname)),
    );
    for (const rule of rules) {
      if (rule.alert === undefined) continue;
      expect(rule.for, rule.alert).toMatch(/^\d+[smh]$/);
      expect(["critical", "warning", "info"], rule.alert).toContain(rule.labels?.severity);
      expect(rule.annotations?.summary, rule.alert).toBeTruthy();
      expect(rule.annotations?.description, rule.alert).toBeTruthy();
      expect(fired.has(rule.alert), `${rule.alert} has no test case where it fires`).toBe(true);
    }
  });

  it("use only metrics taskmesh exports", async () => {
    const known = await knownMetrics();
    expect(unknownNames((await alertRules()).map((r) => r.expr), known)).toEqual([]);
  });
});

describe("/metrics of a running service (promtool check metrics)", () => {
  let server: RpcServer | undefined;

  beforeAll(async () => {
    server = await startServer({
      name: "scheduler",
      port: 0,
      routes: () => undefined,
      files: [],
      registry: fullRegistry("scheduler"),
      logger: silentLogger(),
    });
    // One real RPC, so the RPC metrics have series (recorded by the server's interceptor).
    const health = createClient(Health, createGrpcTransport({ baseUrl: `http://${server.address}` }));
    await health.check({ service: "" });
  });

  afterAll(async () => {
    await server?.close();
  });

  async function scrape(): Promise<string> {
    const res = await fetch(`http://${server?.address}/metrics`);
    expect(res.status).toBe(200);
    return res.text();
  }

  it("serves taskmesh's metrics that pass promtool's lint with no finding", async () => {
    const text = await scrape();
    expect(text).toContain('taskmesh_rpc_requests_total{service="scheduler",method="grpc.health.v1.Health/Check",code="OK"} 1');
    for (const name of Object.values(METRIC_NAMES)) expect(text, name).toContain(`# TYPE ${name} `);
    // Only taskmesh's own families (HELP, TYPE and samples): what this project names and owns.
    const ours = text
      .split("\n")
      .filter((l) => /^(# (HELP|TYPE) )?taskmesh_/.test(l))
      .join("\n");
    const r = await tool("promtool", ["check", "metrics"], { input: `${ours}\n` });
    expect(`${r.stdout}${r.stderr}`.trim()).toBe("");
    expectOk(r, "promtool check metrics (taskmesh_*)");
  });

  it("parses whole, and the only lint findings are prom-client's default gauges named *_total", async () => {
    // prom-client's Node defaults include gauges named nodejs_active_{handles,requests,resources}_total;
    // promtool flags a gauge ending in _total and exits 3 (lint). Exit 1 would be a parse error.
    const r = await tool("promtool", ["check", "metrics"], { input: await scrape() });
    expect([0, 3], `${r.stdout}${r.stderr}`).toContain(r.code);
    const findings = `${r.stdout}${r.stderr}`
      .split("\n")
      .map((l) => l.trim())
      .filter((l) => l !== "");
    for (const f of findings) {
      expect(f).toMatch(/^nodejs_active_[a-z]+_total non-counter metrics should not have "_total" suffix$/);
    }
  });
});

describe("Grafana dashboard and provisioning", () => {
  it("has a Prometheus data source and queries on every panel, laid out on the 24-column grid", async () => {
    const d = await dashboard();
    expect(d.uid).toBe("taskmesh-overview");
    const panels = allPanels(d).filter((p) => p.type !== "row");
    expect(panels.length).toBeGreaterThanOrEqual(20);
    const ids = new Set<number>();
    for (const p of allPanels(d)) {
      expect(ids.has(p.id), `duplicate panel id ${p.id}`).toBe(false);
      ids.add(p.id);
      expect(p.gridPos.x + p.gridPos.w, p.title).toBeLessThanOrEqual(24);
    }
    for (const p of panels) {
      expect(p.datasource?.type, p.title).toBe("prometheus");
      expect(p.datasource?.uid, p.title).toBeTruthy();
      expect(p.targets?.length, p.title).toBeGreaterThan(0);
      const refIds = new Set<string>();
      for (const t of p.targets ?? []) {
        expect(t.expr, p.title).toBeTruthy();
        expect(t.refId, p.title).toBeTruthy();
        expect(refIds.has(t.refId ?? ""), `${p.title}: duplicate refId`).toBe(false);
        refIds.add(t.refId ?? "");
      }
    }
    const titles = panels.map((p) => p.title.toLowerCase()).join("\n");
    for (const topic of ["throughput", "queue depth", "oldest", "rpc rate", "p50", "p99", "slots", "leader", "config revision", "breaker"]) {
      expect(titles, topic).toContain(topic);
    }
  });

  it("queries only valid PromQL", async () => {
    // promtool parses each query as a recording rule (a JSON document is valid YAML).
    const exprs = dashboardExprs(await dashboard()).map(withoutGrafanaVariables);
    const rules = { groups: [{ name: "dashboard", rules: exprs.map((expr, i) => ({ record: `dashboard:query_${i}`, expr })) }] };
    const dir = await mkdtemp(join(tmpdir(), "taskmesh-dash-"));
    try {
      await writeFile(join(dir, "queries.yml"), JSON.stringify(rules));
      const r = await tool("promtool", ["check", "rules", join(dir, "queries.yml")]);
      expectOk(r, "dashboard queries");
      expect(r.stdout).toContain(`SUCCESS: ${exprs.length} rules found`);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("queries only metrics taskmesh exports, and shows every one of them", async () => {
    const exprs = dashboardExprs(await dashboard());
    const known = await knownMetrics();
    expect(unknownNames(exprs, known)).toEqual([]);
    const used = new Set(exprs.flatMap(metricNames).map((n) => n.replace(/_(bucket|sum|count)$/, "")));
    const missing = Object.values(METRIC_NAMES).filter((n) => !used.has(n));
    expect(missing, "metrics with no dashboard panel").toEqual([]);
  });

  it("finds metric names in PromQL", () => {
    expect(
      metricNames(
        'sum by (le) (rate(a_bucket{x="}", y=~"b|c"}[5m] offset 1h)) / on (i) group_left (j) b > bool 1e3 unless vector(0) or c:d',
      ).sort(),
    ).toEqual(["a_bucket", "b", "c:d"]);
  });

  it("is provisioned with the data source the dashboard selects by default", async () => {
    const ds = (await readYaml(join(GRAFANA, "provisioning/datasources/prometheus.yml"))) as {
      datasources: { uid: string; type: string; url: string }[];
    };
    const d = await dashboard();
    const variable = d.templating.list.find((v) => v.type === "datasource");
    expect(variable?.query).toBe("prometheus");
    expect(ds.datasources.map((s) => [s.type, s.uid])).toContainEqual(["prometheus", variable?.current?.value]);
    expect(ds.datasources[0]?.url).toBe("http://prometheus:9090");
    const providers = (await readYaml(join(GRAFANA, "provisioning/dashboards/taskmesh.yml"))) as {
      providers: { options: { path: string } }[];
    };
    const mounts = mountsOf((await composeConfig()).services.grafana);
    expect(mounts.some((m) => m.endsWith(`deploy/grafana/dashboards:${providers.providers[0]?.options.path}`))).toBe(true);
  });
});

interface ComposeService {
  image?: string;
  command?: string[];
  environment?: Record<string, string | null>;
  healthcheck?: { test?: string[] };
  depends_on?: Record<string, { condition: string }>;
  volumes?: (string | { source: string; target: string })[];
  restart?: string;
}

/** The compose file as docker-compose resolves it (anchors merged, variables interpolated). */
async function composeConfig(): Promise<{ services: Record<string, ComposeService> }> {
  const dir = await mkdtemp(join(tmpdir(), "taskmesh-compose-"));
  try {
    const r = await tool("docker-compose", ["-f", "docker-compose.yml", "config"], {
      env: { ...process.env, TASKMESH_BOOTSTRAP_API_KEY: "tm_test_key" },
    });
    expectOk(r, "docker-compose config");
    await writeFile(join(dir, "compose.yml"), r.stdout);
    return (await readYaml(join(dir, "compose.yml"))) as { services: Record<string, ComposeService> };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** A service's volumes as `source:target`, without the access mode. */
function mountsOf(s: ComposeService | undefined): string[] {
  return (s?.volumes ?? []).map((v) => (typeof v === "string" ? v.replace(/:(ro|rw)$/, "") : `${v.source}:${v.target}`));
}

describe("docker-compose.yml", () => {
  const TASKMESH = ["config", "scheduler-1", "scheduler-2", "worker-1", "worker-2", "gateway"];

  it("validates with docker-compose once the bootstrap API key is set", async () => {
    const env = { ...process.env, TASKMESH_BOOTSTRAP_API_KEY: "tm_test_key" };
    expectOk(await tool("docker-compose", ["-f", "docker-compose.yml", "config", "-q"], { env }), "docker-compose config -q");
  });

  it("refuses to start a gateway without a bootstrap API key", async () => {
    const env = { ...process.env };
    delete env.TASKMESH_BOOTSTRAP_API_KEY;
    const r = await tool("docker-compose", ["-f", "docker-compose.yml", "config", "-q"], { env });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("set TASKMESH_BOOTSTRAP_API_KEY");
  });

  it("runs the whole mesh with pinned images, health checks and healthy dependencies", async () => {
    const { services } = await composeConfig();
    expect(Object.keys(services).sort()).toEqual([...TASKMESH, "certs", "etcd", "grafana", "prometheus", "redis"].sort());
    for (const [name, s] of Object.entries(services)) {
      // `certs` runs once, to completion: what depends on it waits for that instead.
      if (name !== "certs") expect(s.healthcheck?.test?.length, `${name} health check`).toBeGreaterThan(0);
      expect(s.image, name).toMatch(/:[\w.-]+$/);
      expect(s.image, name).not.toMatch(/:latest$/);
      for (const [dep, how] of Object.entries(s.depends_on ?? {})) {
        expect(how.condition, `${name} → ${dep}`).toBe(dep === "certs" ? "service_completed_successfully" : "service_healthy");
      }
    }
    const redis = services.redis?.command?.join(" ") ?? "";
    expect(redis).toContain("--appendonly yes");
    expect(redis).toContain("--appendfsync always");
    expect(services.gateway?.environment?.TASKMESH_BOOTSTRAP_API_KEY).toBe("tm_test_key");
    expect(Object.keys(services.gateway?.depends_on ?? {}).sort()).toEqual(["certs", "config", "redis", "scheduler-1", "scheduler-2"]);
  });

  it("restarts every service whose process exits, unless it was stopped on purpose", async () => {
    const { services } = await composeConfig();
    expect(Object.keys(services).length).toBe(TASKMESH.length + 5);
    for (const [name, s] of Object.entries(services)) expect(s.restart, `${name} restart policy`).toBe(name === "certs" ? "no" : "unless-stopped");
  });

  it("has each taskmesh service advertise its compose name and health-check the port it serves", async () => {
    const { services } = await composeConfig();
    const ports: Record<string, number> = { config: 8082, scheduler: 8081, worker: 8090, gateway: 8080 };
    for (const name of TASKMESH) {
      const s = services[name];
      const kind = s?.command?.[0] ?? "";
      const port = ports[kind];
      expect(port, `${name} runs ${kind}`).toBeDefined();
      expect(s?.environment?.TASKMESH_ADVERTISE_ADDRESS, name).toBe(`${name}:${port}`);
      expect(s?.environment?.TASKMESH_ETCD, name).toBe("etcd:2379");
      expect(s?.healthcheck?.test?.join(" "), name).toContain(`/app/deploy/docker/healthcheck.mjs ${port}`);
    }
  });

  it("gives every taskmesh service its own mesh certificate, made by the certs service for its compose name", async () => {
    const { services } = await composeConfig();
    const issued = (services.certs?.command ?? []).filter((a) => !a.startsWith("-") && a !== "certs");
    const tlsMounts = (name: string) => mountsOf(services[name]).filter((m) => m.endsWith(":/app/.taskmesh/tls"));
    for (const name of TASKMESH) {
      const s = services[name];
      const role = s?.command?.[0] ?? "";
      expect(issued, name).toContain(`${role}/${name}@${name}`);
      expect(s?.environment?.TASKMESH_MESH_CA, name).toBe("/app/.taskmesh/tls/ca.crt");
      expect(s?.environment?.TASKMESH_MESH_CERT, name).toBe(`/app/.taskmesh/tls/${role}-${name}.crt`);
      expect(s?.environment?.TASKMESH_MESH_KEY, name).toBe(`/app/.taskmesh/tls/${role}-${name}.key`);
      expect(tlsMounts(name).length, name).toBe(1);
      expect(Object.keys(s?.depends_on ?? {}), name).toContain("certs");
    }
    // The public port is the gateway's only plaintext one; Prometheus scrapes the rest as an observer.
    expect(services.gateway?.healthcheck?.test?.join(" ")).toContain("8080 plain");
    expect(issued).toContain("observer/prometheus");
    expect(services.certs?.command).toContain("--readable=observer/prometheus");
    expect(mountsOf(services.prometheus)).toContainEqual(expect.stringMatching(/:\/etc\/prometheus\/tls$/));
  });

  it("mounts the Prometheus config, rules and compose targets, and the Grafana provisioning", async () => {
    const { services } = await composeConfig();
    expect(mountsOf(services.prometheus)).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/deploy\/prometheus\/prometheus\.yml:\/etc\/prometheus\/prometheus\.yml$/),
        expect.stringMatching(/deploy\/prometheus\/alerts\.yml:\/etc\/prometheus\/alerts\.yml$/),
        expect.stringMatching(/deploy\/prometheus\/compose-targets:\/etc\/prometheus\/targets$/),
      ]),
    );
    expect(mountsOf(services.grafana)).toEqual(
      expect.arrayContaining([expect.stringMatching(/deploy\/grafana\/provisioning:\/etc\/grafana\/provisioning$/)]),
    );
  });
});

describe("Dockerfile", () => {
  it("builds on node:20-bookworm-slim with production dependencies only, which are all the runtime needs", async () => {
    const dockerfile = await readFile(join(ROOT, "Dockerfile"), "utf8");
    expect(dockerfile).toMatch(/^FROM node:20-bookworm-slim$/m);
    expect(dockerfile).toMatch(/npm ci --omit=dev/);
    const pkg = JSON.parse(await readFile(join(ROOT, "package.json"), "utf8")) as { dependencies: Record<string, string> };
    expect(Object.keys(pkg.dependencies)).toContain("tsx");
    // Every package imported by code the image runs must be a production dependency.
    const imported = new Set<string>();
    const walk = async (dir: string): Promise<void> => {
      for (const e of await readdir(dir, { withFileTypes: true })) {
        const path = join(dir, e.name);
        if (e.isDirectory()) await walk(path);
        else if (e.name.endsWith(".ts")) {
          const src = await readFile(path, "utf8");
          for (const m of src.matchAll(/^\s*(?:import|export)(?!\s+type\b)[^"';]*?from\s+["']([^"'.][^"']*)["']/gm)) {
            const spec = m[1] ?? "";
            if (spec.startsWith("node:")) continue;
            imported.add(spec.startsWith("@") ? spec.split("/").slice(0, 2).join("/") : (spec.split("/")[0] ?? spec));
          }
        }
      }
    };
    for (const dir of ["gen", "lib", "services"]) await walk(join(ROOT, dir));
    const missing = [...imported].filter((p) => !(p in pkg.dependencies));
    expect(missing, "imported by gen/, lib/ or services/ but not in dependencies").toEqual([]);
  });

  it("copies only paths the .dockerignore lets through", async () => {
    const dockerfile = await readFile(join(ROOT, "Dockerfile"), "utf8");
    const ignored = (await readFile(join(ROOT, ".dockerignore"), "utf8"))
      .split("\n")
      .map((l) => l.trim())
      .filter((l) => l !== "" && !l.startsWith("#"));
    const sources = [...dockerfile.matchAll(/^COPY\s+(.+)\s+\S+$/gm)].flatMap((m) => (m[1] ?? "").split(/\s+/));
    expect(sources.length).toBeGreaterThan(0);
    for (const src of sources) {
      const parts = src.split("/");
      const prefixes = parts.map((_, i) => parts.slice(0, i + 1).join("/"));
      for (const p of prefixes) expect(ignored, `${src} is excluded by .dockerignore (${p})`).not.toContain(p);
    }
  });

  it("has an entry point that names the services it runs and rejects anything else", async () => {
    const script = join(ROOT, "deploy/docker/entrypoint.sh");
    expectOk(await tool("sh", ["-n", script]), "sh -n entrypoint.sh");
    const env = { ...process.env };
    delete env.TASKMESH_SERVICE;
    const r = await tool("sh", [script, "nope"], { env });
    expect(r.code).toBe(64);
    expect(r.stderr).toContain("gateway|scheduler|worker|config");
    // The image runs the services with the same Node flags as the local launchers.
    expect(readFileSync(script, "utf8")).toContain(`exec node ${SERVICE_NODE_FLAGS.join(" ")} --import tsx`);
  });
});
