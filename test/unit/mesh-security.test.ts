import { Code } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { describePeer, identityOfSan, meshUri, parseMeshUri, peerHasRole, type MeshPeer, type MeshRole } from "../../lib/mesh-identity.js";
import { authorize, isLoopbackHost, MeshSecurity, type AccessPolicy } from "../../lib/mesh-security.js";

const cert = (role: MeshRole, name: string): MeshPeer => ({
  kind: "certificate",
  role,
  name,
});

describe("mesh identities", () => {
  it("round-trips spiffe://taskmesh/<role>/<name> and refuses anything else", () => {
    expect(meshUri("scheduler", "s-1")).toBe("spiffe://taskmesh/scheduler/s-1");
    expect(parseMeshUri("spiffe://taskmesh/producer/acme")).toEqual({ role: "producer", name: "acme" });
    for (const bad of [
      "spiffe://taskmesh/root/x", // no such role
      "spiffe://other/scheduler/x", // another trust domain
      "spiffe://taskmesh/scheduler/", // no name
      "spiffe://taskmesh/scheduler/a/b", // a path, not a name
      "spiffe://taskmesh/scheduler/a b",
      "https://taskmesh/scheduler/x",
    ]) {
      expect(parseMeshUri(bad), bad).toBeUndefined();
    }
    expect(() => meshUri("worker", "../x")).toThrow(/letters, digits/);
  });

  it("reads the identity from a certificate's subjectAltName, and none from one naming two", () => {
    expect(identityOfSan("URI:spiffe://taskmesh/worker/w1, IP Address:10.0.0.2, DNS:localhost")).toEqual({ role: "worker", name: "w1" });
    expect(identityOfSan("DNS:localhost")).toBeUndefined();
    expect(identityOfSan(undefined)).toBeUndefined();
    expect(identityOfSan("URI:spiffe://taskmesh/worker/w1, URI:spiffe://taskmesh/scheduler/s1")).toBeUndefined();
    // One taskmesh identity among foreign URIs is still that identity.
    expect(identityOfSan("URI:https://example.com, URI:spiffe://taskmesh/gateway/g")).toEqual({ role: "gateway", name: "g" });
  });

  it("trusts loopback and token callers as any role, certificates only as theirs", () => {
    expect(peerHasRole({ kind: "trusted", how: "loopback" }, ["scheduler"])).toBe(true);
    expect(peerHasRole({ kind: "trusted", how: "token" }, ["scheduler"])).toBe(true);
    expect(peerHasRole(cert("worker", "w"), ["scheduler"])).toBe(false);
    expect(peerHasRole(cert("scheduler", "s"), ["scheduler"])).toBe(true);
    expect(peerHasRole(undefined, ["scheduler"])).toBe(false);
    expect(describePeer(cert("worker", "w"))).toBe("worker w");
  });
});

describe("access policies", () => {
  const policy: AccessPolicy = {
    "pkg.Svc": ["gateway"],
    "/pkg.Svc/Open": ["gateway", "producer"],
  };

  it("opens health to anyone, reflection and metrics to any authenticated caller, the rest by role", () => {
    expect(authorize(policy, "/grpc.health.v1.Health/Check", undefined)).toBeUndefined();
    expect(authorize(policy, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", undefined)?.code).toBe(Code.Unauthenticated);
    expect(authorize(policy, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", cert("worker", "w"))).toBeUndefined();
    expect(authorize(policy, "/metrics", cert("worker", "w"))).toBeUndefined();
    expect(authorize(policy, "/metrics", undefined)?.code).toBe(Code.Unauthenticated);
    expect(authorize(policy, "/pkg.Svc/Any", cert("gateway", "g"))).toBeUndefined();
    expect(authorize(policy, "/pkg.Svc/Any", cert("producer", "p"))?.code).toBe(Code.PermissionDenied);
    // A method entry wins over its service's.
    expect(authorize(policy, "/pkg.Svc/Open", cert("producer", "p"))).toBeUndefined();
    // What no entry names, nobody calls.
    const err = authorize(policy, "/pkg.Other/X", cert("admin", "ops"));
    expect(err?.code).toBe(Code.PermissionDenied);
    expect(err?.rawMessage).toBe("admin ops may not call /pkg.Other/X (nobody)");
    expect(authorize(policy, "/pkg.Svc/Any", undefined)?.rawMessage).toMatch(/needs a client certificate of the mesh CA or the service token/);
  });
});

describe("mesh credentials without certificates", () => {
  it("knows loopback addresses", () => {
    for (const h of ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "::ffff:127.0.0.1"]) expect(isLoopbackHost(h), h).toBe(true);
    for (const h of ["0.0.0.0", "::", "10.0.0.1", "192.168.1.1", "::ffff:10.0.0.1", "example.com", ""]) expect(isLoopbackHost(h), h).toBe(false);
  });

  it("refuses a non-loopback bind without mTLS or token, trusts only loopback sockets then", () => {
    const none = MeshSecurity.none();
    expect(() => none.assertSafeBind("127.0.0.1", "scheduler")).not.toThrow();
    expect(() => none.assertSafeBind("0.0.0.0", "scheduler")).toThrow(/refusing to serve scheduler on 0\.0\.0\.0/);
    expect(none.peerOfSocket({ remoteAddress: "127.0.0.1" })).toEqual({ kind: "trusted", how: "loopback" });
    expect(none.peerOfSocket({ remoteAddress: "10.0.0.9" })).toBeUndefined();
  });

  it("with a token, trusts exactly the callers that carry it, wherever they are", () => {
    const token = "k".repeat(40);
    const s = MeshSecurity.fromSettings({ "mesh-ca": "", "mesh-cert": "", "mesh-key": "", "service-token": token });
    expect(() => s.assertSafeBind("0.0.0.0", "worker")).not.toThrow();
    // Loopback alone is not enough once a token is set.
    expect(s.peerOfSocket({ remoteAddress: "127.0.0.1" })).toBeUndefined();
    expect(s.peerOfRequest(undefined, token)).toEqual({ kind: "trusted", how: "token" });
    expect(s.peerOfRequest(undefined, `${token}x`)).toBeUndefined();
    expect(s.peerOfRequest(undefined, token.slice(1))).toBeUndefined();
    expect(s.peerOfRequest(undefined, [token, token])).toBeUndefined();
    expect(s.peerOfRequest(undefined, undefined)).toBeUndefined();
    expect(s.headers()).toEqual({ "x-taskmesh-service-token": token });
  });

  it("takes the three certificate files together or not at all", () => {
    expect(() => MeshSecurity.fromSettings({ "mesh-ca": "ca.crt", "mesh-cert": "", "mesh-key": "", "service-token": "" })).toThrow(
      /--mesh-ca, --mesh-cert and --mesh-key go together/,
    );
  });
});
