/**
 * Prometheus file-based service discovery for a local mesh: `npm start` (scripts/mesh.ts) writes
 * the addresses of the processes it started to `deploy/prometheus/targets/local.json`, which
 * `deploy/prometheus/prometheus.yml` scrapes (job `taskmesh`), and removes the file on exit.
 *
 * The file is the standard `file_sd_configs` format: a JSON array of target groups,
 * `[{ "targets": ["127.0.0.1:8080"], "labels": { "component": "gateway", "mesh": "local" } }]`.
 */
import { chmod, copyFile, mkdir, rename, rm, writeFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import type { DevCa } from "../lib/dev-ca.js";

/** Folder whose `*.json` files Prometheus reads for targets (relative to prometheus.yml). */
export const PROMETHEUS_TARGETS_DIR = resolve(import.meta.dirname, "../deploy/prometheus/targets");

/**
 * Where prometheus.yml's `taskmesh-mtls` job reads the CA and its observer certificate when its
 * targets are in `targetsFile`: `tls/` beside the targets folder (prometheus.yml reads
 * `targets/*.json` and `tls/…` relative to itself), e.g. `deploy/prometheus/tls`.
 */
export function prometheusTlsDir(targetsFile: string): string {
  return join(dirname(dirname(resolve(targetsFile))), "tls");
}

/**
 * Issues the `observer/prometheus` certificate of `ca` and copies it, its key and the CA
 * certificate into `dir` (prometheus.yml's `tls/`), keys readable by the owner only.
 */
export async function copyObserverCertificate(ca: DevCa, dir: string): Promise<void> {
  const files = await ca.issue({ role: "observer", name: "prometheus" });
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await copyFile(ca.caCert, join(dir, "ca.crt"));
  await copyFile(files.cert, join(dir, "observer-prometheus.crt"));
  await copyFile(files.key, join(dir, "observer-prometheus.key"));
  await chmod(join(dir, "observer-prometheus.key"), 0o600);
}

/** The file `npm start` writes its mesh's targets to. */
export const LOCAL_TARGETS_FILE = join(PROMETHEUS_TARGETS_DIR, "local.json");

/** One process to scrape. */
export interface ScrapeTarget {
  /** Which taskmesh service it is (`gateway`, `scheduler`, `worker`, `config`): the `component` label. */
  component: string;
  /** `host:port` of its RPC port (which also serves `/metrics`), e.g. `127.0.0.1:8090`. */
  address: string;
  /**
   * `mtls` for an internal port that speaks mTLS: scraped by prometheus.yml's `taskmesh-mtls`
   * job with an observer certificate (the `transport` target label, dropped after relabelling).
   */
  transport?: "mtls";
}

/** One target group of Prometheus's file-based discovery format. */
export interface TargetGroup {
  targets: string[];
  labels: Record<string, string>;
}

/**
 * Labels callers may not set: `service` is already on every scraped series (a target label of
 * the same name would rename it to `exported_service`); `job` and `instance` belong to
 * Prometheus; `component` and `transport` come from each target; `__`-prefixed names are internal.
 */
const RESERVED_LABELS = new Set(["service", "job", "instance", "component", "transport"]);
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
/** `host:port`, `[v6]:port`: what a scrape target may be (no scheme, no path). */
const ADDRESS = /^(\[[0-9a-fA-F:.]+\]|[a-zA-Z0-9]([a-zA-Z0-9.-]*[a-zA-Z0-9])?):(\d{1,5})$/;

/**
 * Builds the target groups for `targets`: one group per component (and transport), in order of first
 * appearance, each labelled `component` plus `labels` (e.g. `{ mesh: "local" }`). Throws on an
 * address that is not `host:port` or a label Prometheus or taskmesh reserves.
 */
export function prometheusTargetGroups(
  targets: readonly ScrapeTarget[],
  labels: Readonly<Record<string, string>> = {},
): TargetGroup[] {
  for (const name of Object.keys(labels)) {
    if (!LABEL_NAME.test(name) || name.startsWith("__") || RESERVED_LABELS.has(name)) {
      throw new Error(`prometheus targets: label ${JSON.stringify(name)} is reserved or invalid`);
    }
  }
  const groups = new Map<string, TargetGroup>();
  for (const t of targets) {
    const m = ADDRESS.exec(t.address);
    if (m === null || Number(m[3]) < 1 || Number(m[3]) > 65535) {
      throw new Error(`prometheus targets: ${JSON.stringify(t.address)} is not host:port`);
    }
    if (t.component === "") throw new Error(`prometheus targets: ${t.address} has no component`);
    const key = `${t.component}/${t.transport ?? ""}`;
    let group = groups.get(key);
    if (group === undefined) {
      group = { targets: [], labels: { ...labels, component: t.component, ...(t.transport !== undefined ? { transport: t.transport } : {}) } };
      groups.set(key, group);
    }
    if (!group.targets.includes(t.address)) group.targets.push(t.address);
  }
  return [...groups.values()];
}

/**
 * Writes `targets` to `file` in Prometheus's file-based discovery format (see
 * {@link prometheusTargetGroups}). The file is replaced atomically (written beside it, then
 * renamed), so Prometheus, which re-reads it on every change, never sees half a file.
 */
export async function writePrometheusTargets(
  file: string,
  targets: readonly ScrapeTarget[],
  labels: Readonly<Record<string, string>> = {},
): Promise<void> {
  const text = `${JSON.stringify(prometheusTargetGroups(targets, labels), null, 2)}\n`;
  await mkdir(dirname(file), { recursive: true });
  // The temporary name must not match the `*.json` glob Prometheus watches.
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, text, "utf8");
  await rename(tmp, file);
}

/** Removes a targets file written by {@link writePrometheusTargets}; a missing file is fine. */
export async function removePrometheusTargets(file: string): Promise<void> {
  await rm(file, { force: true });
}
