/**
 * Who is calling, inside the mesh. With mTLS a caller is the identity in its client certificate:
 * the URI subjectAltName `spiffe://taskmesh/<role>/<name>`; the role decides what it may call
 * (docs/security.md has the table). Without mTLS, a caller is trusted only on loopback or with
 * the shared service token.
 */

/**
 * The roles of the mesh: its services; `producer`, a trusted client submitting for the tenant its
 * certificate names; `admin`, an operator; `observer`, a metrics scraper (Prometheus), which
 * may read metrics, health and reflection and call nothing.
 */
export const MESH_ROLES = ["gateway", "scheduler", "worker", "config", "producer", "admin", "observer"] as const;
/** A role of the mesh. */
export type MeshRole = (typeof MESH_ROLES)[number];

/**
 * A caller the server has authenticated:
 * - `role`/`name` from its certificate;
 * - `trusted` — a caller vouched for without a certificate (a loopback caller of a server
 *   without mTLS or token, or a holder of the service token): it may act as any role, as every
 *   process on the host or every holder of the token could anyway.
 */
export type MeshPeer = { kind: "certificate"; role: MeshRole; name: string } | { kind: "trusted"; how: "loopback" | "token" };

const URI_PREFIX = "spiffe://taskmesh/";
const NAME = /^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$/;

/** The URI subjectAltName of an identity. */
export function meshUri(role: MeshRole, name: string): string {
  if (!NAME.test(name)) throw new Error(`identity name ${JSON.stringify(name)}: letters, digits and . _ : @ - only, at most 128`);
  return `${URI_PREFIX}${role}/${name}`;
}

function isRole(s: string): s is MeshRole {
  return (MESH_ROLES as readonly string[]).includes(s);
}

/** Parses `spiffe://taskmesh/<role>/<name>`; undefined for anything else. */
export function parseMeshUri(uri: string): { role: MeshRole; name: string } | undefined {
  if (!uri.startsWith(URI_PREFIX)) return undefined;
  const rest = uri.slice(URI_PREFIX.length);
  const slash = rest.indexOf("/");
  if (slash <= 0) return undefined;
  const role = rest.slice(0, slash);
  const name = rest.slice(slash + 1);
  if (!isRole(role) || !NAME.test(name)) return undefined;
  return { role, name };
}

/**
 * The taskmesh identity in a certificate's subjectAltName string (as Node prints it:
 * `URI:spiffe://taskmesh/scheduler/s1, IP Address:10.0.0.1`). A certificate naming more than
 * one taskmesh identity names none: which one would it be?
 */
export function identityOfSan(subjectAltName: string | undefined): { role: MeshRole; name: string } | undefined {
  if (subjectAltName === undefined) return undefined;
  const found = subjectAltName
    .split(/,\s*/)
    .filter((entry) => entry.startsWith("URI:"))
    .map((entry) => parseMeshUri(entry.slice(4)))
    .filter((id) => id !== undefined);
  return found.length === 1 ? found[0] : undefined;
}

/** Describes a peer for logs and error messages. */
export function describePeer(peer: MeshPeer | undefined): string {
  if (peer === undefined) return "an unauthenticated caller";
  return peer.kind === "certificate" ? `${peer.role} ${peer.name}` : `a ${peer.how}-trusted caller`;
}

/** True when `peer` may act as one of `roles`. */
export function peerHasRole(peer: MeshPeer | undefined, roles: readonly MeshRole[]): boolean {
  if (peer === undefined) return false;
  return peer.kind === "trusted" || roles.includes(peer.role);
}
