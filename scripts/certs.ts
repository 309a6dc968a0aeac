/**
 * Makes the mesh's certificates (lib/dev-ca.ts; docs/security.md): a CA in `--dir` (made once,
 * kept after), and a certificate per identity given as `<role>/<name>[@host,host…]` — the hosts
 * (names or IP addresses) the others dial it by. Certificates already issued for the same hosts
 * are kept until a day before they expire.
 *
 *   node --import tsx scripts/certs.ts --dir .taskmesh/tls scheduler/s1@10.0.0.11 worker/w1@10.0.0.12 \
 *     gateway/gw1 config/c1@10.0.0.11 admin/ops observer/prometheus producer/acme
 *
 * Keys are readable by their owner only (0600); `--readable <role>/<name>` (repeatable) makes
 * that identity's key readable by everyone (0644), for a reader running as another user (the
 * Prometheus container's observer key).
 */
import { chmod } from "node:fs/promises";
import { parseArgs } from "node:util";
import { DevCa } from "../lib/dev-ca.js";
import { MESH_ROLES, type MeshRole } from "../lib/mesh-identity.js";

function usage(message: string): never {
  process.stderr.write(`${message}\nusage: certs --dir <dir> [--readable <role>/<name>]… <role>/<name>[@host,host…]…  (roles: ${MESH_ROLES.join(", ")})\n`);
  process.exit(64);
}

const { values, positionals } = parseArgs({
  options: { dir: { type: "string" }, readable: { type: "string", multiple: true } },
  allowPositionals: true,
});
const dir = values.dir ?? usage("--dir is required");
const readable = new Set(values.readable ?? []);
const specs = positionals.map((arg) => {
  const m = /^([a-z]+)\/([^@]+)(?:@(.+))?$/.exec(arg);
  if (m === null) usage(`${JSON.stringify(arg)}: expected <role>/<name>[@host,host…]`);
  const [, role = "", name = "", hosts] = m;
  if (!(MESH_ROLES as readonly string[]).includes(role)) usage(`${JSON.stringify(arg)}: no role ${JSON.stringify(role)}`);
  return { role: role as MeshRole, name, hosts: hosts === undefined ? [] : hosts.split(",").filter((h) => h !== "") };
});

const ca = await DevCa.open(dir);
process.stdout.write(`CA ${ca.caCert}\n`);
for (const spec of specs) {
  const files = await ca.issue(spec);
  await chmod(files.key, readable.has(`${spec.role}/${spec.name}`) ? 0o644 : 0o600);
  process.stdout.write(`${spec.role}/${spec.name} ${files.cert} ${files.key}\n`);
}
