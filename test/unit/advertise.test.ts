import { Writable } from "node:stream";
import { describe, expect, it } from "vitest";
import { isLoopback, warnIfUnreachable } from "../../lib/advertise.js";
import { createLogger } from "../../lib/logger.js";

describe("advertised addresses", () => {
  it("knows loopback addresses", () => {
    for (const a of ["127.0.0.1:8080", "127.1.2.3:1", "localhost:2379", "[::1]:8081", "http://127.0.0.1:2379"]) expect(isLoopback(a)).toBe(true);
    for (const a of ["10.0.0.5:8080", "[fe80::1]:80", "scheduler:8081", "http://etcd-1:2379"]) expect(isLoopback(a)).toBe(false);
  });

  it("warns only when a loopback address is registered in a mesh whose etcd is elsewhere", () => {
    const lines: string[] = [];
    const destination = new Writable({
      write(chunk: Buffer, _enc, done) {
        lines.push(chunk.toString());
        done();
      },
    });
    const log = createLogger("test", { level: "warn", destination });
    warnIfUnreachable("worker", "127.0.0.1:8090", ["127.0.0.1:2379"], log);
    warnIfUnreachable("worker", "10.0.0.7:8090", ["10.0.0.1:2379"], log);
    expect(lines).toEqual([]);
    warnIfUnreachable("worker", "127.0.0.1:8090", ["127.0.0.1:2379", "10.0.0.1:2379"], log);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain("set --host or --advertise-address");
  });
});
