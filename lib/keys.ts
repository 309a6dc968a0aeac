/**
 * The etcd key layout, in one place. Every key lives under a root (default
 * "/taskmesh/") so tests and side-by-side meshes can share one etcd with their own roots.
 */
export interface EtcdKeys {
  /** The root itself, ending in "/". */
  readonly root: string;
  /** Prefix of worker registrations: `<root>workers/`. */
  readonly workers: string;
  /** Key of one worker. */
  worker(id: string): string;
  /** Prefix of one service's instances: `<root>services/<service>/`. */
  services(service: string): string;
  /** Key of one service instance. */
  service(service: string, id: string): string;
  /** Prefix of configuration documents: `<root>config/`. */
  readonly config: string;
  /** Prefix of API keys: `<root>apikeys/`. */
  readonly apiKeys: string;
  /** Election name under `<root>election/` (etcd3's election namespace). */
  readonly schedulerElection: string;
}

/** Builds the key layout for a root. @param root default "/taskmesh/" */
export function etcdKeys(root = "/taskmesh/"): EtcdKeys {
  const r = root.endsWith("/") ? root : `${root}/`;
  return {
    root: r,
    workers: `${r}workers/`,
    worker: (id) => `${r}workers/${id}`,
    services: (service) => `${r}services/${service}/`,
    service: (service, id) => `${r}services/${service}/${id}`,
    config: `${r}config/`,
    apiKeys: `${r}apikeys/`,
    schedulerElection: "scheduler",
  };
}

/** What a worker writes at `/taskmesh/workers/<id>` (JSON). */
export interface WorkerRecord {
  id: string;
  address: string;
  host: string;
  pid: number;
  slots: number;
  taskTypes: string[];
  queues: string[];
  labels: Record<string, string>;
  version: string;
  started: string;
  /** Set while the worker drains before leaving: it takes no new tasks but still reports. */
  draining: boolean;
}

/** What a service instance writes at `/taskmesh/services/<service>/<id>` (JSON). */
export interface ServiceRecord {
  id: string;
  address: string;
  host: string;
  pid: number;
  version: string;
  started: string;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Parses a worker record; undefined when malformed. */
export function parseWorkerRecord(id: string, json: string): WorkerRecord | undefined {
  let v: unknown;
  try {
    v = JSON.parse(json);
  } catch {
    return undefined;
  }
  if (!isObject(v) || typeof v.address !== "string" || typeof v.slots !== "number") return undefined;
  const strings = (x: unknown): string[] =>
    Array.isArray(x) ? x.filter((s): s is string => typeof s === "string") : [];
  const labels: Record<string, string> = {};
  if (isObject(v.labels)) {
    for (const [k, val] of Object.entries(v.labels)) if (typeof val === "string") labels[k] = val;
  }
  return {
    id,
    address: v.address,
    host: typeof v.host === "string" ? v.host : "",
    pid: typeof v.pid === "number" ? v.pid : 0,
    slots: v.slots,
    taskTypes: strings(v.taskTypes),
    queues: strings(v.queues),
    labels,
    version: typeof v.version === "string" ? v.version : "",
    started: typeof v.started === "string" ? v.started : "",
    draining: v.draining === true,
  };
}

/** Parses a service record; undefined when malformed. */
export function parseServiceRecord(id: string, json: string): ServiceRecord | undefined {
  let v: unknown;
  try {
    v = JSON.parse(json);
  } catch {
    return undefined;
  }
  if (!isObject(v) || typeof v.address !== "string") return undefined;
  return {
    id,
    address: v.address,
    host: typeof v.host === "string" ? v.host : "",
    pid: typeof v.pid === "number" ? v.pid : 0,
    version: typeof v.version === "string" ? v.version : "",
    started: typeof v.started === "string" ? v.started : "",
  };
}
