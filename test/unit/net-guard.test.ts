import { describe, expect, it } from "vitest";
import { classifyAddress, isPublicAddress, parseIp, sameAddress } from "../../services/worker/net-guard.js";

describe("parseIp", () => {
  it("parses IPv4 and IPv6 forms", () => {
    expect(parseIp("1.2.3.4")).toEqual({ family: 4, bytes: Uint8Array.from([1, 2, 3, 4]) });
    expect(parseIp("::1")?.bytes).toEqual(Uint8Array.from([...new Array<number>(15).fill(0), 1]));
    expect(parseIp("[2001:db8::1]")?.family).toBe(6);
    expect(parseIp("fe80::1%eth0")?.bytes[0]).toBe(0xfe);
    expect(parseIp("::ffff:10.0.0.1")?.bytes.subarray(10)).toEqual(Uint8Array.from([0xff, 0xff, 10, 0, 0, 1]));
    expect(parseIp("1:2:3:4:5:6:7:8")?.bytes[15]).toBe(8);
    expect(parseIp("1:2:3:4:5:6:1.2.3.4")?.bytes[15]).toBe(4);
  });

  it("rejects malformed addresses", () => {
    for (const s of ["", "1.2.3", "1.2.3.4.5", "256.1.1.1", "01.2.3.4", "1::2::3", "1:2:3:4:5:6:7:8:9", "12345::", "g::1", "example.com", ":1:2"]) {
      expect(parseIp(s), s).toBeUndefined();
    }
  });
});

describe("classifyAddress", () => {
  it.each([
    ["127.0.0.1", "loopback"],
    ["127.255.0.9", "loopback"],
    ["::1", "loopback"],
    ["10.1.2.3", "private"],
    ["172.16.0.1", "private"],
    ["172.31.255.255", "private"],
    ["192.168.1.1", "private"],
    ["fc00::1", "private"],
    ["fd12:3456::1", "private"],
    ["169.254.169.254", "link-local"],
    ["fe80::1", "link-local"],
    ["febf::1", "link-local"],
    ["0.0.0.0", "unspecified"],
    ["0.1.2.3", "unspecified"],
    ["::", "unspecified"],
    ["100.64.0.1", "cgnat"],
    ["100.127.255.255", "cgnat"],
    ["224.0.0.1", "multicast"],
    ["ff02::1", "multicast"],
    ["255.255.255.255", "reserved"],
    ["192.0.2.1", "reserved"],
    ["::ffff:127.0.0.1", "loopback"],
    ["::ffff:7f00:1", "loopback"],
    ["::ffff:169.254.169.254", "link-local"],
    ["::ffff:10.0.0.1", "private"],
    ["64:ff9b::10.0.0.1", "private"],
    ["2002:7f00:1::", "loopback"],
    ["::127.0.0.1", "reserved"],
    ["2001:db8::1", "reserved"],
    ["nonsense", "invalid"],
  ])("%s is %s", (ip, cls) => {
    expect(classifyAddress(ip)).toBe(cls);
  });

  it.each(["8.8.8.8", "93.184.215.14", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::8.8.8.8"])(
    "%s is public",
    (ip) => {
      expect(isPublicAddress(ip)).toBe(true);
    },
  );
});

describe("sameAddress", () => {
  it("compares addresses, not spellings", () => {
    expect(sameAddress("::1", "0:0:0:0:0:0:0:1")).toBe(true);
    expect(sameAddress("[::1]", "::1")).toBe(true);
    expect(sameAddress("::ffff:10.0.0.1", "10.0.0.1")).toBe(true);
    expect(sameAddress("10.0.0.1", "10.0.0.2")).toBe(false);
    expect(sameAddress("x", "x")).toBe(false);
  });
});
