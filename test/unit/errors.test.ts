import { Code, ConnectError } from "@connectrpc/connect";
import { ClientClosedError, GRPCDeadlineExceededError, GRPCUnavailableError } from "etcd3";
import { ReplyError } from "ioredis";
import { MaxRetriesPerRequestError } from "ioredis/built/errors/index.js";
import { describe, expect, it } from "vitest";
import { ErrorInfoSchema, RetryInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { DEPENDENCY_UNAVAILABLE, isDependencyUnavailable, toConnectError } from "../../lib/errors.js";
import { silentLogger } from "../../lib/logger.js";

const log = silentLogger();

function socketError(code: string): Error {
  return Object.assign(new Error(`connect ${code} 127.0.0.1:6379`), { code, syscall: "connect" });
}

describe("toConnectError", () => {
  it("turns every failing-dependency error into UNAVAILABLE with retry-after, RetryInfo and the DEPENDENCY_UNAVAILABLE reason", () => {
    const cases: [unknown, string][] = [
      [new MaxRetriesPerRequestError(3), "redis"],
      [new Error("Connection is closed."), "redis"],
      [new Error("Command timed out"), "redis"],
      [new Error("Stream isn't writeable and enableOfflineQueue options is false"), "redis"],
      [new ReplyError("LOADING Redis is loading the dataset in memory"), "redis"],
      [new ReplyError("READONLY You can't write against a read only replica."), "redis"],
      [new ReplyError("MASTERDOWN Link with MASTER is down"), "redis"],
      [new ReplyError("CLUSTERDOWN The cluster is down"), "redis"],
      [new ReplyError("TRYAGAIN Multiple keys request during rehashing of slot"), "redis"],
      [new GRPCUnavailableError("14 UNAVAILABLE: No connection established"), "etcd"],
      [new GRPCDeadlineExceededError("4 DEADLINE_EXCEEDED"), "etcd"],
      [new ClientClosedError("Lease"), "etcd"],
      [socketError("ECONNREFUSED"), "a dependency"],
      [socketError("ETIMEDOUT"), "a dependency"],
      [new Error("wrapped", { cause: new MaxRetriesPerRequestError(3) }), "redis"],
    ];
    for (const [err, dependency] of cases) {
      const e = toConnectError(err, log);
      expect(e.code, String(err)).toBe(Code.Unavailable);
      expect(Number(e.metadata.get("retry-after"))).toBeGreaterThanOrEqual(1);
      expect(e.findDetails(RetryInfoSchema)).toHaveLength(1);
      const [info] = e.findDetails(ErrorInfoSchema);
      expect(info?.reason).toBe(DEPENDENCY_UNAVAILABLE);
      expect(info?.metadata.dependency).toBe(dependency);
      expect(isDependencyUnavailable(e)).toBe(true);
      expect(e.rawMessage).not.toContain("127.0.0.1"); // no internals to the client
    }
  });

  it("keeps ConnectErrors and makes anything else INTERNAL without its message", () => {
    const mine = new ConnectError("x: bad", Code.InvalidArgument);
    expect(toConnectError(mine, log)).toBe(mine);
    for (const err of [new TypeError("undefined is not a function"), new ReplyError("ERR wrong number of arguments"), "boom"]) {
      const e = toConnectError(err, log);
      expect(e.code).toBe(Code.Internal);
      expect(e.rawMessage).toBe("internal error");
      expect(isDependencyUnavailable(e)).toBe(false);
    }
    expect(isDependencyUnavailable(new ConnectError("down", Code.Unavailable))).toBe(false);
  });
});
