import { EventEmitter } from "node:events";
import { Code, ConnectError, type Transport } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { SchedulerService } from "../../gen/taskmesh/v1/scheduler_service_pb.js";
import { dependencyUnavailable } from "../../lib/errors.js";
import { ChannelFailure } from "../../lib/grpc-channel.js";
import type { ServiceRecord } from "../../lib/keys.js";
import type { MembershipEvents } from "../../lib/membership.js";
import { ReplicaBreaker, Upstreams, type ReplicaChannel, type ReplicaConnector } from "../../services/gateway/upstreams.js";

function fakeClock(): { now: () => number; advance: (ms: number) => void } {
  let t = 1000;
  return { now: () => t, advance: (ms) => (t += ms) };
}

describe("ReplicaBreaker", () => {
  it("opens after N consecutive failures, lets one trial through per period, doubles the period up to the cap, closes on success", () => {
    const clock = fakeClock();
    const b = new ReplicaBreaker({ failures: 3, openMs: 500, maxOpenMs: 2000, now: clock.now });
    expect(b.state).toBe("closed");
    b.failure(false);
    b.failure(false);
    b.success(); // not consecutive
    b.failure(false);
    b.failure(false);
    expect(b.state).toBe("closed");
    expect(b.acquire()).toBe("call");
    b.failure(false);
    expect(b.state).toBe("open");
    expect(b.acquire()).toBeUndefined();
    clock.advance(499);
    expect(b.acquire()).toBeUndefined();
    clock.advance(1);
    expect(b.state).toBe("half-open");
    expect(b.acquire()).toBe("trial");
    expect(b.acquire()).toBeUndefined(); // one trial at a time
    b.failure(true);
    expect(b.state).toBe("open");
    clock.advance(999);
    expect(b.acquire()).toBeUndefined();
    clock.advance(1);
    expect(b.acquire()).toBe("trial");
    b.failure(true); // 2000
    clock.advance(2000);
    expect(b.acquire()).toBe("trial");
    b.failure(true); // capped at 2000
    clock.advance(1999);
    expect(b.acquire()).toBeUndefined();
    clock.advance(1);
    expect(b.acquire()).toBe("trial");
    b.success();
    expect(b.state).toBe("closed");
    // The period starts over after a success.
    for (let i = 0; i < 3; i++) b.failure(false);
    clock.advance(500);
    expect(b.acquire()).toBe("trial");
  });

  it("lets the next call try when a trial proved nothing, and ignores failures of calls started before it opened", () => {
    const clock = fakeClock();
    const b = new ReplicaBreaker({ failures: 1, openMs: 100, maxOpenMs: 400, now: clock.now });
    b.failure(false);
    b.failure(false); // a straggler: the period stays
    clock.advance(100);
    expect(b.acquire()).toBe("trial");
    b.release(true);
    expect(b.acquire()).toBe("trial");
  });
});

/** A replica's behaviour in the fake connector. */
type Behaviour = (signal: AbortSignal, timeoutMs: number) => Promise<Uint8Array>;

class FakeMembers extends EventEmitter<MembershipEvents<ServiceRecord>> {
  readonly members = new Map<string, ServiceRecord>();
  snapshot(): ReadonlyMap<string, ServiceRecord> {
    return new Map(this.members);
  }
  put(r: ServiceRecord): void {
    const previous = this.members.get(r.id);
    this.members.set(r.id, r);
    this.emit("put", r.id, r, previous);
  }
}

function record(id: string, pid = 1): ServiceRecord {
  return { id, address: `${id}:1`, host: "h", pid, version: "v", started: `t${pid}` };
}

function setup(n: number, policy: ConstructorParameters<typeof Upstreams>[3] = {}) {
  const clock = fakeClock();
  const members = new FakeMembers();
  const behaviour = new Map<string, Behaviour>();
  const calls: string[] = [];
  const closed: string[] = [];
  const connector: ReplicaConnector = {
    transport: () => ({ transport: {} as Transport, close: () => undefined }),
    channel(address): ReplicaChannel {
      return {
        unary: (_path, _message, _headers, timeoutMs, signal) => {
          calls.push(address);
          const b = behaviour.get(address) ?? (() => Promise.resolve(new Uint8Array([1])));
          return b(signal ?? new AbortController().signal, timeoutMs);
        },
        close: () => closed.push(address),
      };
    },
  };
  for (let i = 0; i < n; i++) members.put(record(`r${i}`));
  const up = new Upstreams(SchedulerService, "scheduler", members, { now: clock.now, ...policy }, connector);
  const raw = (idempotent: boolean, signal = new AbortController().signal, timeoutMs?: number) =>
    up.callRaw("/x/Y", new Uint8Array(), {}, idempotent, signal, timeoutMs);
  return { clock, members, behaviour, calls, closed, up, raw };
}

const refused: Behaviour = () =>
  Promise.reject(new ConnectError("refused", Code.Unavailable, undefined, undefined, new ChannelFailure("refused", "refused", false)));
const lost: Behaviour = () =>
  Promise.reject(new ConnectError("lost", Code.Unavailable, undefined, undefined, new ChannelFailure("lost", "lost", true)));
const silent: Behaviour = () =>
  Promise.reject(new ConnectError("ping", Code.Unavailable, undefined, undefined, new ChannelFailure("ping-timeout", "ping", true)));
/** Never answers; rejects as GrpcChannel does when the signal aborts or the deadline passes. */
const hang: Behaviour = (signal, timeoutMs) =>
  new Promise((_resolve, reject) => {
    const t = setTimeout(() => reject(new ConnectError("deadline", Code.DeadlineExceeded)), timeoutMs);
    signal.addEventListener("abort", () => {
      clearTimeout(t);
      reject(ConnectError.from(signal.reason, Code.Canceled));
    });
  });

async function codeOf(p: Promise<unknown>): Promise<ConnectError | undefined> {
  try {
    await p;
    return undefined;
  } catch (err) {
    return ConnectError.from(err);
  }
}

describe("Upstreams", () => {
  it("never counts the caller's cancellation or its shorter deadline against a replica", async () => {
    const { up, raw, behaviour } = setup(1, { breakerFailures: 1 });
    behaviour.set("r0:1", hang);
    for (let i = 0; i < 5; i++) {
      const ac = new AbortController();
      const p = raw(true, ac.signal);
      ac.abort(new ConnectError("client went away", Code.Canceled));
      expect((await codeOf(p))?.code).toBe(Code.Canceled);
    }
    for (let i = 0; i < 5; i++) {
      const err = await codeOf(raw(true, new AbortController().signal, 5));
      expect(err?.code).toBe(Code.DeadlineExceeded);
    }
    expect(up.breakerStates().get("r0:1")).toBe("closed");
  });

  it("counts the policy's deadline as the replica's failure (DEADLINE_EXCEEDED)", async () => {
    const { up, raw, behaviour } = setup(1, { breakerFailures: 1, timeoutMs: 20 });
    behaviour.set("r0:1", hang);
    expect((await codeOf(raw(true)))?.code).toBe(Code.DeadlineExceeded);
    expect(up.breakerStates().get("r0:1")).toBe("open");
  });

  it("retries a read once on each other replica: one failure per replica that failed", async () => {
    const { up, raw, behaviour, calls } = setup(3);
    for (const a of ["r0:1", "r1:1", "r2:1"]) behaviour.set(a, refused);
    const err = await codeOf(raw(true));
    expect(err?.code).toBe(Code.Unavailable);
    expect(Number(err?.metadata.get("retry-after"))).toBeGreaterThanOrEqual(1);
    expect([...calls].sort()).toEqual(["r0:1", "r1:1", "r2:1"]);
    expect([...up.breakerStates().values()]).toEqual(["closed", "closed", "closed"]);
    await codeOf(raw(true));
    await codeOf(raw(true));
    expect([...up.breakerStates().values()]).toEqual(["open", "open", "open"]);
  });

  it("moves a write that may have been sent only when it is repeatable; one surely unsent always", async () => {
    const { raw, behaviour, calls } = setup(2);
    behaviour.set("r0:1", lost);
    behaviour.set("r1:1", lost);
    expect((await codeOf(raw(false)))?.code).toBe(Code.Unavailable);
    expect(calls).toHaveLength(1);
    calls.length = 0;
    behaviour.set("r1:1", () => Promise.resolve(new Uint8Array([7])));
    // Repeatable (a submit with a request id): moved to the other replica, whichever came first.
    for (let i = 0; i < 2; i++) await expect(raw(true)).resolves.toEqual(new Uint8Array([7]));
    calls.length = 0;
    behaviour.set("r0:1", refused);
    for (let i = 0; i < 2; i++) await expect(raw(false)).resolves.toEqual(new Uint8Array([7]));
  });

  it("answers DEADLINE_EXCEEDED when the replica went silent, UNAVAILABLE when it could not be reached", async () => {
    const { raw, behaviour } = setup(1);
    behaviour.set("r0:1", silent);
    expect((await codeOf(raw(true)))?.code).toBe(Code.DeadlineExceeded);
    behaviour.set("r0:1", refused);
    expect((await codeOf(raw(true)))?.code).toBe(Code.Unavailable);
  });

  it("relays an UNAVAILABLE marked DEPENDENCY_UNAVAILABLE without retrying or counting it", async () => {
    const { up, raw, behaviour, calls } = setup(2, { breakerFailures: 1 });
    const dep: Behaviour = () => {
      const e = dependencyUnavailable("redis");
      // As received from a replica: with the trailers.
      const received = new ConnectError(e.rawMessage, e.code, { "grpc-status": "14" });
      received.details.push(...e.details);
      return Promise.reject(received);
    };
    behaviour.set("r0:1", dep);
    behaviour.set("r1:1", dep);
    const err = await codeOf(raw(true));
    expect(err?.code).toBe(Code.Unavailable);
    expect(calls).toHaveLength(1);
    expect([...up.breakerStates().values()].every((s) => s === "closed")).toBe(true);
  });

  it("gives an open replica its trial once the period passed, even when every replica is open", async () => {
    const { up, raw, behaviour, clock, calls } = setup(2, { breakerFailures: 1, halfOpenAfterMs: 500 });
    behaviour.set("r0:1", refused);
    behaviour.set("r1:1", refused);
    await codeOf(raw(true));
    expect([...up.breakerStates().values()]).toEqual(["open", "open"]);
    calls.length = 0;
    const refusedNow = await codeOf(raw(true));
    expect(refusedNow?.code).toBe(Code.Unavailable);
    expect(refusedNow?.rawMessage).toMatch(/every scheduler instance is failing/);
    expect(calls).toHaveLength(0);
    clock.advance(500);
    behaviour.set("r0:1", () => Promise.resolve(new Uint8Array([1])));
    behaviour.set("r1:1", () => Promise.resolve(new Uint8Array([1])));
    await raw(false);
    await raw(false);
    expect([...up.breakerStates().values()]).toEqual(["closed", "closed"]);
  });

  it("opens streams on closed replicas, on half-open ones when none is closed, never on open ones", async () => {
    const { up, raw, behaviour, clock } = setup(1, { breakerFailures: 1, halfOpenAfterMs: 500 });
    expect(up.stream()).toBeDefined();
    behaviour.set("r0:1", refused);
    await codeOf(raw(true));
    expect(() => up.stream()).toThrow(/every scheduler instance is failing/);
    clock.advance(500);
    expect(up.stream()).toBeDefined();
    // The stream took no trial: the next unary call still does.
    behaviour.set("r0:1", () => Promise.resolve(new Uint8Array([1])));
    await raw(true);
    expect(up.breakerStates().get("r0:1")).toBe("closed");
  });

  it("gives a replica that registers again with a new record a fresh breaker and connection", async () => {
    const { up, raw, behaviour, members, closed } = setup(1, { breakerFailures: 1 });
    behaviour.set("r0:1", refused);
    await codeOf(raw(true));
    expect(up.breakerStates().get("r0:1")).toBe("open");
    members.put(record("r0", 2)); // restarted: new pid
    expect(closed).toEqual(["r0:1"]);
    behaviour.set("r0:1", () => Promise.resolve(new Uint8Array([1])));
    await expect(raw(true)).resolves.toEqual(new Uint8Array([1]));
    expect(up.breakerStates().get("r0:1")).toBe("closed");
  });
});

describe("which forwarded calls may be repeated on another replica", () => {
  it("repeats reads, submits (they carry a request id) and idempotent writes; other writes only when surely unsent", async () => {
    const { repeatable } = await import("../../services/gateway/public-services.js");
    for (const m of ["GetTask", "ListTasks", "ListWorkers", "GetClusterStatus", "GetConfig", "ListConfigs", "GetConfigHistory", "GetSchedule", "ListSchedules"]) {
      expect(repeatable(m), m).toBe(true);
    }
    for (const m of ["SubmitTask", "SubmitTasks", "CancelTask", "PauseQueue", "ResumeQueue", "PauseSchedule", "ResumeSchedule"]) {
      expect(repeatable(m), m).toBe(true);
    }
    for (const m of ["RetryTask", "CreateSchedule", "DeleteSchedule", "PutConfig", "DeleteConfig", "RollbackConfig", "PromoteGrayConfig", "AbandonGrayConfig"]) {
      expect(repeatable(m), m).toBe(false);
    }
  });
});
