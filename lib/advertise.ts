import type { Logger } from "./logger.js";

/** The host part of `host:port` (brackets of an IPv6 address removed). */
function hostOf(address: string): string {
  const a = address.replace(/^https?:\/\//, "");
  if (a.startsWith("[")) return a.slice(1, a.indexOf("]"));
  const i = a.lastIndexOf(":");
  return i < 0 ? a : a.slice(0, i);
}

/** True for addresses only this machine can dial. */
export function isLoopback(address: string): boolean {
  const h = hostOf(address).toLowerCase();
  return h === "localhost" || h === "::1" || h.startsWith("127.");
}

/**
 * Warns when a service registers a loopback address while etcd lives on another host: the other
 * hosts of the mesh would find this service in etcd and fail to reach it. (Binding 127.0.0.1 is
 * the safe default for one machine; across hosts, bind with `--host` or set `--advertise-address`.)
 */
export function warnIfUnreachable(service: string, registered: string, etcdEndpoints: readonly string[], log: Logger): void {
  const remote = etcdEndpoints.find((e) => !isLoopback(e));
  if (!isLoopback(registered) || remote === undefined) return;
  log.warn(
    { service, registered, etcd: remote },
    "registered a loopback address while etcd is on another host: other hosts cannot reach this service (set --host or --advertise-address)",
  );
}
