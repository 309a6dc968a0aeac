import { spawn, type ChildProcess } from "node:child_process";
import { createServer, type Server, type Socket } from "node:net";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterEach, describe, expect, it } from "vitest";
import { ChannelFailure, GrpcChannel } from "../../lib/grpc-channel.js";
import { freePort } from "../support/ports.js";

/** A gRPC-ish HTTP/2 server in its own process (so it can be stopped): answers every call with an empty message. */
const SERVER = `
const http2 = require("node:http2");
const s = http2.createServer();
s.on("stream", (st) => {
  st.on("data", () => undefined);
  st.respond({ ":status": 200, "content-type": "application/grpc+proto" }, { waitForTrailers: true });
  st.on("wantTrailers", () => st.sendTrailers({ "grpc-status": "0" }));
  st.end(Buffer.from([0, 0, 0, 0, 0]));
});
s.listen(0, "127.0.0.1", () => process.stdout.write(String(s.address().port) + "\\n"));
`;

async function failure(p: Promise<unknown>): Promise<ConnectError> {
  try {
    await p;
  } catch (err) {
    return ConnectError.from(err);
  }
  throw new Error("expected the call to fail");
}

describe("GrpcChannel: bounded detection of peers that are gone or silent", () => {
  const cleanup: (() => void)[] = [];
  afterEach(() => {
    for (const f of cleanup.splice(0)) f();
  });

  it("fails a call to a refused port at once, as not sent", async () => {
    const ch = new GrpcChannel(`127.0.0.1:${await freePort()}`);
    cleanup.push(() => ch.close());
    const err = await failure(ch.unary("/a.B/C", new Uint8Array(), {}, 5000));
    expect(err.code).toBe(Code.Unavailable);
    expect(err.cause).toBeInstanceOf(ChannelFailure);
    expect((err.cause as ChannelFailure).kind).toBe("refused");
    expect((err.cause as ChannelFailure).sent).toBe(false);
  });

  it("gives up on a peer that accepts the connection but never speaks HTTP/2, without sending the call", async () => {
    const sockets: Socket[] = [];
    const silent: Server = createServer((s) => sockets.push(s));
    await new Promise<void>((r) => silent.listen(0, "127.0.0.1", r));
    cleanup.push(() => {
      for (const s of sockets) s.destroy();
      silent.close();
    });
    const port = (silent.address() as { port: number }).port;
    const ch = new GrpcChannel(`127.0.0.1:${port}`, { connectTimeoutMs: 500 });
    cleanup.push(() => ch.close());
    const t0 = performance.now();
    const err = await failure(ch.unary("/a.B/C", new Uint8Array(), {}, 5000));
    const took = performance.now() - t0;
    expect(err.code).toBe(Code.Unavailable);
    expect((err.cause as ChannelFailure).kind).toBe("connect-timeout");
    expect((err.cause as ChannelFailure).sent).toBe(false);
    expect(took).toBeGreaterThanOrEqual(450);
    expect(took).toBeLessThan(1500);
  });

  it("finds a peer that stops answering (SIGSTOP) within 2 s of its last answer, then refuses to send to it until it speaks", async () => {
    const child: ChildProcess = spawn(process.execPath, ["-e", SERVER], { stdio: ["ignore", "pipe", "inherit"] });
    cleanup.push(() => {
      child.kill("SIGCONT");
      child.kill("SIGKILL");
    });
    const port = await new Promise<number>((resolve, reject) => {
      child.stdout?.once("data", (b: Buffer) => resolve(Number(b.toString().trim())));
      child.once("exit", () => reject(new Error("server exited")));
    });
    const ch = new GrpcChannel(`127.0.0.1:${port}`);
    cleanup.push(() => ch.close());
    expect((await ch.unary("/a.B/C", new Uint8Array(), {}, 5000)).length).toBe(0);
    child.kill("SIGSTOP");
    const t0 = performance.now();
    const inFlight = await failure(ch.unary("/a.B/C", new Uint8Array(), {}, 10_000));
    const detected = performance.now() - t0;
    expect(inFlight.code).toBe(Code.Unavailable);
    expect((inFlight.cause as ChannelFailure).kind).toBe("ping-timeout");
    expect((inFlight.cause as ChannelFailure).sent).toBe(true);
    // Pings every second, each given a second: 2 s at most, plus timer slack on a loaded machine.
    expect(detected).toBeLessThan(2600);
    const next = await failure(ch.unary("/a.B/C", new Uint8Array(), {}, 10_000));
    expect((next.cause as ChannelFailure).kind).toBe("connect-timeout");
    expect((next.cause as ChannelFailure).sent).toBe(false);
    child.kill("SIGCONT");
    expect((await ch.unary("/a.B/C", new Uint8Array(), {}, 5000)).length).toBe(0);
    process.stdout.write(`silent peer found after ${Math.round(detected)} ms\n`);
  });
});
