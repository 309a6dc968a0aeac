/**
 * A certificate authority for the mesh, made with the `openssl` command: one CA, and a
 * certificate per service identity (`spiffe://taskmesh/<role>/<name>` in its subjectAltName, see
 * docs/security.md). `npm start` makes one under its data directory, the tests make their own,
 * and `taskmesh certs` makes one for a deployment. Keys are ECDSA P-256, written with mode 0600.
 */
import { execFile } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { chmod, mkdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { isIP } from "node:net";
import { join } from "node:path";
import { promisify } from "node:util";
import { meshUri, type MeshRole } from "./mesh-identity.js";

const run = promisify(execFile);

/** The files of one certificate. */
export interface CertFiles {
  /** PEM certificate. */
  cert: string;
  /** PEM private key (mode 0600). */
  key: string;
}

/** What a leaf certificate is for. */
export interface LeafSpec {
  /**
   * The role in the mesh (its SPIFFE URI carries it); none for a certificate that is no mesh
   * identity (etcd's or Redis's server certificate, an etcd client user).
   */
  role?: MeshRole;
  /** The identity's name (a tenant for `producer`, an operator for `admin`, else a host or id). */
  name: string;
  /** Host names and IP addresses to add as DNS/IP subjectAltNames (servers dialled by name). */
  hosts?: readonly string[];
  /** Days of validity. @default 825 */
  days?: number;
}

async function openssl(args: string[]): Promise<void> {
  try {
    await run("openssl", args, { timeout: 30_000 });
  } catch (err) {
    const e = err as { stderr?: string; code?: string };
    if (e.code === "ENOENT") throw new Error("the openssl command is needed to make certificates (apt-get install openssl)");
    throw new Error(`openssl ${args[0]} failed: ${(e.stderr ?? String(err)).trim()}`);
  }
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/** Names a leaf's files: `<role>-<name>` with anything unusual replaced. */
function fileStem(spec: LeafSpec): string {
  return (spec.role === undefined ? spec.name : `${spec.role}-${spec.name}`).replace(/[^A-Za-z0-9._-]/g, "_");
}

/** A CA in a directory: `ca.crt`, `ca.key`, and the leaves it signed. */
export class DevCa {
  private constructor(
    /** The directory holding every file. */
    readonly dir: string,
  ) {}

  /** PEM file of the CA certificate: what every service trusts. */
  get caCert(): string {
    return join(this.dir, "ca.crt");
  }

  private get caKey(): string {
    return join(this.dir, "ca.key");
  }

  /** Opens the CA in `dir`, making it first if it is not there. */
  static async open(dir: string, opts: { days?: number; subject?: string } = {}): Promise<DevCa> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const ca = new DevCa(dir);
    if (!(await exists(ca.caCert)) || !(await exists(ca.caKey))) {
      await openssl([
        "req", "-x509", "-new", "-nodes",
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-keyout", ca.caKey, "-out", ca.caCert,
        "-days", String(opts.days ?? 3650),
        "-subj", `/CN=${opts.subject ?? "taskmesh development CA"}`,
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
      ]);
      await chmod(ca.caKey, 0o600);
    }
    return ca;
  }

  /**
   * Issues a certificate for `spec` (server and client use), or returns the one already issued
   * when it still has more than a day to run and names the same hosts.
   */
  async issue(spec: LeafSpec): Promise<CertFiles> {
    const stem = fileStem(spec);
    const files = { cert: join(this.dir, `${stem}.crt`), key: join(this.dir, `${stem}.key`) };
    const hosts = [...new Set(spec.hosts ?? [])];
    if ((await exists(files.cert)) && (await exists(files.key))) {
      const cert = new X509Certificate(await readFile(files.cert));
      const sans = cert.subjectAltName ?? "";
      const fresh = Date.parse(cert.validTo) - Date.now() > 86_400_000;
      if (fresh && hosts.every((h) => sans.includes(isIP(h) !== 0 ? `IP Address:${h}` : `DNS:${h}`))) return files;
    }
    const san = [...(spec.role !== undefined ? [`URI:${meshUri(spec.role, spec.name)}`] : []), ...hosts.map((h) => (isIP(h) !== 0 ? `IP:${h}` : `DNS:${h}`))].join(",");
    const ext = join(this.dir, `${stem}.ext`);
    const csr = join(this.dir, `${stem}.csr`);
    await writeFile(
      ext,
      [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyAgreement",
        "extendedKeyUsage=serverAuth,clientAuth",
        // A client certificate of no mesh identity and no host (an etcd user) has none.
        ...(san !== "" ? [`subjectAltName=${san}`] : []),
        "",
      ].join("\n"),
    );
    try {
      await openssl([
        "req", "-new", "-nodes",
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-keyout", files.key, "-out", csr,
        // etcd takes a client certificate's CN as its user name.
        "-subj", `/CN=${spec.role === undefined ? spec.name : `${spec.role} ${spec.name}`}`.slice(0, 68),
      ]);
      await chmod(files.key, 0o600);
      await openssl([
        "x509", "-req", "-in", csr,
        "-CA", this.caCert, "-CAkey", this.caKey, "-CAcreateserial",
        "-days", String(spec.days ?? 825),
        "-extfile", ext, "-out", files.cert,
      ]);
    } finally {
      await rm(ext, { force: true });
      await rm(csr, { force: true });
    }
    return files;
  }
}
