import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { EtcdAuthenticationFailedError, GRPCUnavailableError } from "etcd3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DevCa, type CertFiles } from "../../lib/dev-ca.js";
import {
  createEtcd,
  etcdSecurityFrom,
  etcdSecuritySettings,
  type EtcdClient,
  type EtcdClientOptions,
  type EtcdSecuritySettingValues,
} from "../../lib/etcd.js";
import { createLogger, silentLogger } from "../../lib/logger.js";
import { readSettings } from "../../lib/settings.js";
import { startSecureEtcd, type SecureEtcd } from "../support/etcd-secure.js";
import { waitFor } from "../support/wait.js";

/** Rejects when `p` has not settled within `ms`: a refused connection must fail, not hang. */
async function within<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, hung]);
  } finally {
    clearTimeout(timer);
  }
}

/** The error `p` fails with, within `ms` (the test fails if it succeeds or hangs). */
async function failure(p: Promise<unknown>, ms = 8000): Promise<Error> {
  const settled = await within(
    p.then(
      () => undefined,
      (err: unknown) => err as Error,
    ),
    ms,
  );
  if (settled === undefined) throw new Error("expected the call to fail; it succeeded");
  return settled;
}

/** Linearizable reads the member answered successfully so far (what probes do), from its metrics. */
async function rangesServed(etcd: SecureEtcd): Promise<number> {
  const text = await (await fetch(`${etcd.metricsUrl}/metrics`)).text();
  const m = /^grpc_server_handled_total\{grpc_code="OK",grpc_method="Range",grpc_service="etcdserverpb\.KV",grpc_type="unary"\} (\d+)$/m.exec(text);
  if (m?.[1] === undefined) throw new Error("no Range counter in etcd's metrics");
  return Number(m[1]);
}

/** A logger whose lines are kept, to check what was logged. */
function capturingLogger(): { logger: EtcdClientOptions["logger"]; text: () => string } {
  const chunks: string[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _enc, cb) {
      chunks.push(chunk.toString());
      cb();
    },
  });
  return { logger: createLogger("etcd-tls-test", { level: "debug", destination }), text: () => chunks.join("") };
}

const ROOT_PASSWORD = "root-pw-7f3a";
const USER = "taskmesh";
const USER_PASSWORD = "taskmesh-pw-91c2";

describe("etcd over TLS", () => {
  let dir: string;
  let ca: DevCa;
  let clientCert: CertFiles;
  let otherCa: DevCa;
  let otherClientCert: CertFiles;
  /** Client certificates required (--client-cert-auth); two client ports, so probes run. */
  let mtls: SecureEtcd;
  /** TLS without client certificates, etcd auth on; two client ports, so probes run. */
  let authed: SecureEtcd;
  const clients: EtcdClient[] = [];
  const client = (opts: EtcdClientOptions): EtcdClient => {
    const c = createEtcd(opts);
    clients.push(c);
    return c;
  };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "taskmesh-etcd-tls-test-"));
    // One after the other: the two etcds share the CA directory.
    mtls = await startSecureEtcd({ caDir: join(dir, "ca"), clientCertAuth: true, clientPorts: 2 });
    authed = await startSecureEtcd({
      caDir: join(dir, "ca"),
      clientPorts: 2,
      users: [
        { name: "root", password: ROOT_PASSWORD },
        { name: USER, password: USER_PASSWORD },
      ],
    });
    ca = mtls.ca;
    clientCert = await ca.issue({ name: "etcd-client", hosts: ["localhost"] });
    otherCa = await DevCa.open(join(dir, "other-ca"), { subject: "another CA" });
    otherClientCert = await otherCa.issue({ name: "etcd-client", hosts: ["localhost"] });
  }, 60_000);

  afterAll(async () => {
    for (const c of clients) c.close();
    await Promise.all([mtls?.stop(), authed?.stop()]);
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  it("puts, gets, watches and leases with a client certificate, and probes find the members healthy", async () => {
    const health: [string, boolean][] = [];
    const c = client({
      endpoints: mtls.endpoints,
      security: { ca: mtls.caFile, cert: clientCert.cert, key: clientCert.key },
      logger: silentLogger(),
      // One failed probe would mark a member unhealthy (and be recorded): none may fail.
      probeFailures: 1,
      probeIntervalMs: 50,
      probeTimeoutMs: 3000,
      onMemberHealth: (endpoint, healthy) => health.push([endpoint, healthy]),
    });

    await c.put("/tls/a").value("1").exec();
    expect(await c.get("/tls/a").string()).toBe("1");

    const watcher = await c.watch().key("/tls/w").create();
    try {
      const seen = new Promise<string>((resolve) => watcher.on("put", (kv) => resolve(kv.value.toString())));
      await c.put("/tls/w").value("changed").exec();
      expect(await within(seen, 5000)).toBe("changed");
    } finally {
      await watcher.cancel();
    }

    const lease = c.lease(5, { autoKeepAlive: false });
    await lease.put("/tls/leased").value("alive").exec();
    await lease.keepaliveOnce();
    expect(await c.get("/tls/leased").string()).toBe("alive");
    await lease.revoke();
    expect(await c.get("/tls/leased").string()).toBeNull();

    // Both members (two client URLs of one etcd) answer their probes over TLS with the client
    // certificate: etcd counts the reads, and no probe failed.
    const before = await rangesServed(mtls);
    await waitFor(async () => (await rangesServed(mtls)) >= before + 20, { timeoutMs: 10_000, what: "20 probes answered" });
    expect(health).toEqual([]);
    expect([...c.memberHealth()]).toEqual(mtls.endpoints.map((e) => [e.replace("https://", ""), true]));
  });

  it("accepts endpoints as host:port as well", async () => {
    const c = client({
      endpoints: mtls.endpoints.map((e) => e.replace("https://", "")),
      security: { ca: mtls.caFile, cert: clientCert.cert, key: clientCert.key },
      logger: silentLogger(),
    });
    await c.put("/tls/bare").value("ok").exec();
    expect(await c.get("/tls/bare").string()).toBe("ok");
    const port = mtls.endpoints[0]?.replace("https://", "");
    expect(() => createEtcd({ endpoints: [`http://${port}`], security: { ca: mtls.caFile }, logger: silentLogger() })).toThrow(
      /is http but TLS is on/,
    );
  });

  it("checks the certificate files when the client is created", () => {
    const logger = silentLogger();
    expect(() =>
      createEtcd({ endpoints: mtls.endpoints, security: { ca: mtls.caFile, cert: clientCert.cert, key: otherClientCert.key }, logger }),
    ).toThrow(/the client key .* is not the key of the client certificate/);
    expect(() => createEtcd({ endpoints: mtls.endpoints, security: { ca: clientCert.key }, logger })).toThrow(
      /the CA certificate .* is not a PEM certificate/,
    );
  });

  it("is refused without a client certificate, with an error that says so, within its deadline", async () => {
    const c = client({ endpoints: mtls.endpoints, security: { ca: mtls.caFile }, logger: silentLogger(), callTimeoutMs: 2000 });
    const err = await failure(c.get("/tls/a").string());
    expect(err).toBeInstanceOf(GRPCUnavailableError);
    expect(err.message).toMatch(/cannot connect over TLS: .*requires a client certificate .*--etcd-cert/);
  });

  it("is refused with a client certificate of another CA, and its probes find every member refusing", async () => {
    const health = new Map<string, boolean>();
    const c = client({
      endpoints: mtls.endpoints,
      security: { ca: mtls.caFile, cert: otherClientCert.cert, key: otherClientCert.key },
      logger: silentLogger(),
      callTimeoutMs: 2000,
      probeIntervalMs: 50,
      onMemberHealth: (endpoint, healthy) => health.set(endpoint, healthy),
    });
    const err = await failure(c.put("/tls/other").value("x").exec());
    expect(err).toBeInstanceOf(GRPCUnavailableError);
    expect(err.message).toMatch(/cannot connect over TLS: .*refused our client certificate/);
    await waitFor(() => health.size === 2 && [...health.values()].every((h) => !h), { timeoutMs: 5000, what: "both members unhealthy" });
  });

  it("refuses a server whose certificate another CA signed, with an error that says so", async () => {
    const c = client({
      endpoints: mtls.endpoints,
      security: { ca: otherCa.caCert, cert: clientCert.cert, key: clientCert.key },
      logger: silentLogger(),
      callTimeoutMs: 2000,
    });
    const err = await failure(c.get("/tls/a").string());
    expect(err).toBeInstanceOf(GRPCUnavailableError);
    expect(err.message).toMatch(/cannot connect over TLS: .*server certificate is not trusted .*--etcd-ca/);
  });

  it("works with etcd auth and the right password, probes included, and never logs the password", async () => {
    const log = capturingLogger();
    const health: [string, boolean][] = [];
    const c = client({
      endpoints: authed.endpoints,
      security: { ca: authed.caFile, username: USER, password: USER_PASSWORD },
      logger: log.logger,
      probeFailures: 1,
      probeIntervalMs: 50,
      probeTimeoutMs: 3000,
      onMemberHealth: (endpoint, healthy) => health.push([endpoint, healthy]),
    });
    await c.put("/auth/a").value("1").exec();
    expect(await c.get("/auth/a").string()).toBe("1");
    // etcd checks the user: root made the key, a read as the user sees it.
    await authed.etcdctl("put", "/auth/by-root", "r");
    expect(await c.get("/auth/by-root").string()).toBe("r");

    const before = await rangesServed(authed);
    await waitFor(async () => (await rangesServed(authed)) >= before + 20, { timeoutMs: 10_000, what: "20 probes answered" });
    expect(health).toEqual([]);
    expect(log.text()).toContain(`"user":"${USER}"`);
    expect(log.text()).not.toContain(USER_PASSWORD);
  });

  it("fails with a wrong password, with an error naming the user and not the password", async () => {
    const log = capturingLogger();
    const c = client({
      endpoints: authed.endpoints,
      security: { ca: authed.caFile, username: USER, password: "wrong-password" },
      logger: log.logger,
      callTimeoutMs: 2000,
    });
    const err = await failure(c.get("/auth/a").string());
    expect(err).toBeInstanceOf(EtcdAuthenticationFailedError);
    expect(err.message).toMatch(/user "taskmesh" cannot log in .*--etcd-password.*invalid user ID or password/);
    expect(err.message).not.toContain("wrong-password");
    expect(log.text()).not.toContain("wrong-password");
  });

  it("fails without a user when etcd auth is on, saying a user is needed", async () => {
    const c = client({ endpoints: authed.endpoints, security: { ca: authed.caFile }, logger: silentLogger(), callTimeoutMs: 2000 });
    const err = await failure(c.get("/auth/a").string());
    expect(err.message).toMatch(/auth is on and no user is given .*--etcd-user/);
  });
});

describe("etcd security settings", () => {
  const none: EtcdSecuritySettingValues = { "etcd-ca": "", "etcd-cert": "", "etcd-key": "", "etcd-user": "", "etcd-password": "" };

  it("are off when nothing is set, and read from flags and env", () => {
    expect(etcdSecurityFrom(none)).toBeUndefined();
    const values = readSettings("svc", etcdSecuritySettings, ["--etcd-ca", "/ca.crt", "--etcd-user", "u"], {
      TASKMESH_ETCD_CERT: "/c.crt",
      TASKMESH_ETCD_KEY: "/c.key",
      TASKMESH_ETCD_PASSWORD: "p",
    });
    expect(etcdSecurityFrom(values)).toEqual({ ca: "/ca.crt", cert: "/c.crt", key: "/c.key", username: "u", password: "p" });
    expect(etcdSecurityFrom({ ...none, "etcd-ca": "/ca.crt" })).toEqual({ ca: "/ca.crt" });
  });

  it("reject half-set combinations, naming the flags", () => {
    expect(() => etcdSecurityFrom({ ...none, "etcd-ca": "/ca", "etcd-cert": "/c" })).toThrow(/--etcd-cert and --etcd-key go together/);
    expect(() => etcdSecurityFrom({ ...none, "etcd-ca": "/ca", "etcd-key": "/k" })).toThrow(/--etcd-cert and --etcd-key go together/);
    expect(() => etcdSecurityFrom({ ...none, "etcd-cert": "/c", "etcd-key": "/k" })).toThrow(/--etcd-cert and --etcd-key need --etcd-ca/);
    expect(() => etcdSecurityFrom({ ...none, "etcd-user": "u" })).toThrow(/--etcd-user and --etcd-password go together/);
    expect(() => etcdSecurityFrom({ ...none, "etcd-password": "p" })).toThrow(/--etcd-user and --etcd-password go together/);
  });

  it("are checked by createEtcd too, before connecting", () => {
    const logger = silentLogger();
    expect(() => createEtcd({ endpoints: ["127.0.0.1:1"], security: { cert: "/c", key: "/k" }, logger })).toThrow(
      /security\.cert \(--etcd-cert\) and security\.key \(--etcd-key\) need security\.ca \(--etcd-ca\)/,
    );
    expect(() => createEtcd({ endpoints: ["127.0.0.1:1"], security: { username: "u" }, logger })).toThrow(/security\.password/);
    expect(() => createEtcd({ endpoints: ["127.0.0.1:1"], security: { ca: "/no/such/ca.crt" }, logger })).toThrow(
      /cannot read the CA certificate \/no\/such\/ca\.crt/,
    );
    expect(() => createEtcd({ endpoints: ["https://127.0.0.1:1"], logger })).toThrow(/is https but no CA is given/);
  });
});
