import { execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { DevCa, type CertFiles } from "../../lib/dev-ca.js";
import type { Backend } from "./backends.js";
import { freePort } from "./ports.js";
import { waitFor } from "./wait.js";

const run = promisify(execFile);

/** An etcd user made by {@link startSecureEtcd}. */
export interface EtcdUser {
  name: string;
  password: string;
}

/** Options for {@link startSecureEtcd}. */
export interface SecureEtcdOptions {
  /**
   * Directory of the CA (lib/dev-ca.ts) that signs etcd's server certificate, made if missing;
   * the caller removes it. Start etcds sharing one directory one after another.
   */
  caDir: string;
  /** Require a client certificate of that CA (`--client-cert-auth`). @default false */
  clientCertAuth?: boolean;
  /**
   * Turn etcd auth on with these users. `root` gets the root role (and a random password when
   * not listed); every other user may read and write every key. @default none: auth off
   */
  users?: readonly EtcdUser[];
  /**
   * Client ports the member listens on, each its own endpoint (two endpoints of one member make
   * lib/etcd.ts probe them). @default 1
   */
  clientPorts?: number;
}

/** A real single-member etcd serving its clients over TLS. */
export interface SecureEtcd extends Backend {
  /** `https://127.0.0.1:port` of the first client port. */
  readonly address: string;
  /** `https://127.0.0.1:port` of every client port. */
  readonly endpoints: readonly string[];
  /** The CA that signed the server certificate (issue client certificates with it). */
  readonly ca: DevCa;
  /** PEM file of that CA: the `ca` of lib/etcd.ts's `EtcdSecurity`. */
  readonly caFile: string;
  /** The certificate `etcdctl` uses (CN `root`). */
  readonly adminCert: CertFiles;
  /** Password of the `root` user when auth is on. */
  readonly rootPassword: string | undefined;
  /** Plaintext URL of etcd's metrics (`<url>/metrics`). */
  readonly metricsUrl: string;
  /** Runs `etcdctl` against the member with the TLS flags (and `root`'s password when auth is on); returns stdout. */
  etcdctl(...args: string[]): Promise<string>;
}

/**
 * Starts a real single-member `etcd` on free loopback ports with a temp data dir, its client
 * URLs on TLS with a certificate of the CA in `opts.caDir` (for `127.0.0.1` and `localhost`),
 * and turns etcd auth on when `opts.users` is given. Resolves once it answers over TLS (and, with
 * auth, once `root` can read).
 */
export async function startSecureEtcd(opts: SecureEtcdOptions): Promise<SecureEtcd> {
  const ca = await DevCa.open(opts.caDir);
  const server = await ca.issue({ name: "etcd-server", hosts: ["127.0.0.1", "localhost"] });
  // (DevCa cannot issue a certificate without any subjectAltName: a host is named.)
  const adminCert = await ca.issue({ name: "root", hosts: ["localhost"] });
  const dir = await mkdtemp(join(tmpdir(), "taskmesh-etcd-tls-"));
  const ports: number[] = [];
  for (let i = 0; i < Math.max(1, opts.clientPorts ?? 1); i++) ports.push(await freePort());
  const peerPort = await freePort();
  const metricsPort = await freePort();
  const endpoints = ports.map((p) => `https://127.0.0.1:${p}`);
  const clientCertAuth = opts.clientCertAuth === true;
  const child = spawn(
    "etcd",
    [
      "--name", "tls",
      "--data-dir", join(dir, "data"),
      "--listen-client-urls", endpoints.join(","),
      "--advertise-client-urls", endpoints.join(","),
      "--listen-peer-urls", `http://127.0.0.1:${peerPort}`,
      "--initial-advertise-peer-urls", `http://127.0.0.1:${peerPort}`,
      "--initial-cluster", `tls=http://127.0.0.1:${peerPort}`,
      "--listen-metrics-urls", `http://127.0.0.1:${metricsPort}`,
      "--cert-file", server.cert,
      "--key-file", server.key,
      // etcd 3.4 asks for client certificates whenever it has a trusted CA: only with cert auth.
      ...(clientCertAuth ? ["--trusted-ca-file", ca.caCert, "--client-cert-auth"] : []),
      "--bcrypt-cost", "4",
      "--log-level", "error",
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let stderr = "";
  child.stderr?.on("data", (b: Buffer) => {
    stderr = (stderr + b.toString()).slice(-4000);
  });
  let exited = false;
  const gone = new Promise<void>((resolve) =>
    child.once("exit", () => {
      exited = true;
      resolve();
    }),
  );
  const stop = async (): Promise<void> => {
    if (!exited) {
      child.kill("SIGKILL");
      await gone;
    }
    await rm(dir, { recursive: true, force: true });
  };

  let rootPassword: string | undefined;
  const etcdctl = async (...args: string[]): Promise<string> => {
    try {
      const { stdout } = await run(
        "etcdctl",
        [
          `--endpoints=${endpoints[0]}`,
          `--cacert=${ca.caCert}`,
          `--cert=${adminCert.cert}`,
          `--key=${adminCert.key}`,
          "--dial-timeout=2s",
          "--command-timeout=3s",
          ...(rootPassword !== undefined ? [`--user=root:${rootPassword}`] : []),
          ...args,
        ],
        { env: { ...process.env, ETCDCTL_API: "3" }, timeout: 10_000 },
      );
      return stdout;
    } catch (err) {
      const e = err as { stderr?: string };
      throw new Error(`etcdctl ${args.join(" ")} failed: ${(e.stderr ?? String(err)).trim()}`);
    }
  };

  try {
    await waitFor(
      async () => {
        if (exited) throw new Error(`etcd exited: ${stderr}`);
        await etcdctl("endpoint", "health");
        return true;
      },
      { timeoutMs: 20_000, intervalMs: 100, what: `etcd over TLS on ${endpoints.join(",")}` },
    );
    if (opts.users !== undefined) {
      const users = [...opts.users];
      const root = users.find((u) => u.name === "root") ?? { name: "root", password: randomBytes(12).toString("hex") };
      if (!users.includes(root)) users.push(root);
      const others = users.filter((u) => u !== root);
      if (others.length > 0) {
        await etcdctl("role", "add", "readwrite-all");
        await etcdctl("role", "grant-permission", "readwrite-all", "readwrite", "--from-key", "");
      }
      for (const u of users) await etcdctl("user", "add", u.name, `--new-user-password=${u.password}`);
      await etcdctl("user", "grant-role", "root", "root");
      for (const u of others) await etcdctl("user", "grant-role", u.name, "readwrite-all");
      await etcdctl("auth", "enable");
      rootPassword = root.password;
      await waitFor(
        async () => {
          if (exited) throw new Error(`etcd exited: ${stderr}`);
          await etcdctl("get", "/taskmesh-auth-check");
          return true;
        },
        { timeoutMs: 10_000, intervalMs: 100, what: "etcd auth on" },
      );
    }
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    address: endpoints[0] as string,
    port: ports[0] as number,
    endpoints,
    process: child,
    ca,
    caFile: ca.caCert,
    adminCert,
    rootPassword,
    metricsUrl: `http://127.0.0.1:${metricsPort}`,
    etcdctl,
    stop,
  };
}
