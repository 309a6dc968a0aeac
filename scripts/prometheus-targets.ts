/**
 * Prometheus file-based service discovery for a local mesh: `npm start` (scripts/mesh.ts) writes
 * the addresses of the processes it started to `deploy/prometheus/targets/local.json`, which
 * `deploy/prometheus/prometheus.yml` scrapes (job `taskmesh`), and removes the file on exit.
 *
 * The file is the standard `file_sd_configs` format: a JSON array of target groups,
 * `[{ "targets": ["127.0.0.1:8080"], "labels": { "component": "gateway", "mesh": "local" } }]`.
 */
import { mkdir, rename, rm, writeFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";

/** Folder whose `*.json` files Prometheus reads for targets (relative to prometheus.yml). */
export const PROMETHEUS_TARGETS_DIR = resolve(import.meta.dirname, "../deploy/prometheus/targets");

/** The file `npm start` writes its mesh's targets to. */
export const LOCAL_TARGETS_FILE = join(PROMETHEUS_TARGETS_DIR, "local.json");

/** One process to scrape. */
export interface ScrapeTarget {
  /** Which taskmesh service it is (`gateway`, `scheduler`, `worker`, `config`): the `component` label. */
  component: string;
  /** `host:port` of its RPC port (which also serves `/metrics`), e.g. `127.0.0.1:8090`. */
  address: string;
}

/** One target group of Prometheus's file-based discovery format. */
export interface TargetGroup {
  targets: string[];
  labels: Record<string, string>;
}

/**
 * Labels callers may not set: `service` is already on every scraped series (a target label of
 * the same name would rename it to `exported_service`); `job` and `instance` belong to
 * Prometheus; `component` comes from each target; `__`-prefixed names are internal.
 */
const RESERVED_LABELS = new Set(["service", "job", "instance", "component"]);
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
/** `host:port`, `[v6]:port`: what a scrape target may be (no scheme, no path). */
const ADDRESS = /^(\[[0-9a-fA-F:.]+\]|[a-zA-Z0-9]([a-zA-Z0-9.-]*[a-zA-Z0-9])?):(\d{1,5})$/;

/**
 * Builds the target groups for `targets`: one group per component, in order of first
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
    let group = groups.get(t.component);
    if (group === undefined) {
      group = { targets: [], labels: { ...labels, component: t.component } };
      groups.set(t.component, group);
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
