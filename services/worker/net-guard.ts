/**
 * Address classification for the `http_request` built-in's SSRF guard: which IP addresses a task
 * may make the worker connect to. Only `public` addresses are reachable unless an operator allows
 * a host explicitly. Anything unparsable or outside the global unicast space fails closed.
 */

/** Where an address points. Everything except `public` is refused by default. */
export type AddressClass =
  | "public"
  | "loopback"
  | "private"
  | "link-local"
  | "unspecified"
  | "cgnat"
  | "multicast"
  | "reserved"
  | "invalid";

/** A parsed IP address: 4 or 16 bytes, network order. */
export interface ParsedIp {
  family: 4 | 6;
  bytes: Uint8Array;
}

/**
 * Parses a textual IP address: strict dotted-quad IPv4 (no leading zeros, which some resolvers
 * read as octal), or IPv6 with `::` compression, an optional dotted IPv4 tail, optional
 * surrounding brackets and an optional zone (`%eth0`, ignored). Returns undefined if invalid.
 */
export function parseIp(text: string): ParsedIp | undefined {
  let s = text.trim();
  if (s.startsWith("[") && s.endsWith("]")) s = s.slice(1, -1);
  if (s.includes(":")) {
    const bytes = parseIpv6(s);
    return bytes === undefined ? undefined : { family: 6, bytes };
  }
  const bytes = parseIpv4(s);
  return bytes === undefined ? undefined : { family: 4, bytes };
}

function parseIpv4(s: string): Uint8Array | undefined {
  const parts = s.split(".");
  if (parts.length !== 4) return undefined;
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    const p = parts[i] ?? "";
    if (!/^(0|[1-9][0-9]{0,2})$/.test(p)) return undefined;
    const n = Number(p);
    if (n > 255) return undefined;
    out[i] = n;
  }
  return out;
}

function parseIpv6(input: string): Uint8Array | undefined {
  const zone = input.indexOf("%");
  const s = zone >= 0 ? input.slice(0, zone) : input;
  if (s === "" || s.split("::").length > 2) return undefined;

  // A dotted IPv4 tail stands for the last two groups.
  let tail: Uint8Array | undefined;
  let head = s;
  const lastColon = s.lastIndexOf(":");
  if (s.slice(lastColon + 1).includes(".")) {
    tail = parseIpv4(s.slice(lastColon + 1));
    if (tail === undefined) return undefined;
    head = s.slice(0, lastColon + 1);
    // "::1.2.3.4" leaves "::"; "a::b:1.2.3.4" leaves "a::b:" → drop the trailing single colon.
    if (head.endsWith(":") && !head.endsWith("::")) head = head.slice(0, -1);
  }
  const groupsWanted = tail === undefined ? 8 : 6;

  const parseGroups = (part: string): number[] | undefined => {
    if (part === "") return [];
    const out: number[] = [];
    for (const g of part.split(":")) {
      if (!/^[0-9a-fA-F]{1,4}$/.test(g)) return undefined;
      out.push(parseInt(g, 16));
    }
    return out;
  };

  let groups: number[];
  if (head.includes("::")) {
    const [l, r] = head.split("::");
    const left = parseGroups(l ?? "");
    const right = parseGroups(r ?? "");
    if (left === undefined || right === undefined) return undefined;
    const missing = groupsWanted - left.length - right.length;
    if (missing < 1) return undefined;
    groups = [...left, ...new Array<number>(missing).fill(0), ...right];
  } else {
    const g = parseGroups(head);
    if (g === undefined || g.length !== groupsWanted) return undefined;
    groups = g;
  }

  const out = new Uint8Array(16);
  groups.forEach((g, i) => {
    out[i * 2] = g >> 8;
    out[i * 2 + 1] = g & 0xff;
  });
  if (tail !== undefined) out.set(tail, 12);
  return out;
}

/** True when the first `bits` bits of `bytes` equal those of `prefix`. */
function inPrefix(bytes: Uint8Array, prefix: readonly number[], bits: number): boolean {
  for (let i = 0; i < bits; i += 8) {
    const take = Math.min(8, bits - i);
    const mask = (0xff << (8 - take)) & 0xff;
    if (((bytes[i / 8] ?? 0) & mask) !== ((prefix[i / 8] ?? 0) & mask)) return false;
  }
  return true;
}

/** IPv4 special-purpose ranges (RFC 6890 and friends), first match wins. */
const IPV4_RANGES: readonly { prefix: readonly number[]; bits: number; cls: AddressClass }[] = [
  { prefix: [0], bits: 8, cls: "unspecified" }, // "this network", incl. 0.0.0.0
  { prefix: [10], bits: 8, cls: "private" },
  { prefix: [100, 64], bits: 10, cls: "cgnat" },
  { prefix: [127], bits: 8, cls: "loopback" },
  { prefix: [169, 254], bits: 16, cls: "link-local" }, // incl. 169.254.169.254 (cloud metadata)
  { prefix: [172, 16], bits: 12, cls: "private" },
  { prefix: [192, 0, 0], bits: 24, cls: "reserved" }, // IETF protocol assignments
  { prefix: [192, 0, 2], bits: 24, cls: "reserved" }, // documentation
  { prefix: [192, 88, 99], bits: 24, cls: "reserved" }, // 6to4 relay anycast (deprecated)
  { prefix: [192, 168], bits: 16, cls: "private" },
  { prefix: [198, 18], bits: 15, cls: "reserved" }, // benchmarking
  { prefix: [198, 51, 100], bits: 24, cls: "reserved" }, // documentation
  { prefix: [203, 0, 113], bits: 24, cls: "reserved" }, // documentation
  { prefix: [224], bits: 4, cls: "multicast" },
  { prefix: [240], bits: 4, cls: "reserved" }, // future use, incl. 255.255.255.255
];

function classifyIpv4(bytes: Uint8Array): AddressClass {
  for (const r of IPV4_RANGES) if (inPrefix(bytes, r.prefix, r.bits)) return r.cls;
  return "public";
}

function classifyIpv6(b: Uint8Array): AddressClass {
  const zeroUpTo = (n: number): boolean => b.subarray(0, n).every((x) => x === 0);
  if (zeroUpTo(16)) return "unspecified";
  if (zeroUpTo(15) && b[15] === 1) return "loopback";
  // IPv4-mapped ::ffff:a.b.c.d: the kernel connects to the IPv4 address.
  if (zeroUpTo(10) && b[10] === 0xff && b[11] === 0xff) return classifyIpv4(b.subarray(12));
  // IPv4-compatible ::a.b.c.d (deprecated) and the rest of ::/96.
  if (zeroUpTo(12)) return "reserved";
  // NAT64 well-known prefix 64:ff9b::/96 reaches the embedded IPv4 address.
  if (inPrefix(b, [0x00, 0x64, 0xff, 0x9b], 96)) return classifyIpv4(b.subarray(12));
  if (inPrefix(b, [0x00, 0x64, 0xff, 0x9b, 0x00, 0x01], 48)) return "private"; // local-use NAT64
  if (inPrefix(b, [0x01, 0x00], 64)) return "reserved"; // discard-only
  if (inPrefix(b, [0x20, 0x01, 0x0d, 0xb8], 32)) return "reserved"; // documentation
  if (inPrefix(b, [0x20, 0x01, 0x00, 0x00], 32)) return "reserved"; // Teredo (hides an IPv4 address)
  // 6to4 2002:AABB:CCDD::/48 tunnels to IPv4 AA.BB.CC.DD.
  if (inPrefix(b, [0x20, 0x02], 16)) return classifyIpv4(b.subarray(2, 6));
  if (inPrefix(b, [0xfc], 7)) return "private"; // unique local
  if (inPrefix(b, [0xfe, 0x80], 10)) return "link-local";
  if (inPrefix(b, [0xfe, 0xc0], 10)) return "private"; // site-local (deprecated)
  if (inPrefix(b, [0xff], 8)) return "multicast";
  if (inPrefix(b, [0x20], 3)) return "public"; // global unicast 2000::/3
  return "reserved";
}

/** Classifies a textual IP address; `invalid` if it does not parse. */
export function classifyAddress(ip: string): AddressClass {
  const p = parseIp(ip);
  if (p === undefined) return "invalid";
  return p.family === 4 ? classifyIpv4(p.bytes) : classifyIpv6(p.bytes);
}

/** True when a task may connect to `ip` without an explicit allowance. */
export function isPublicAddress(ip: string): boolean {
  return classifyAddress(ip) === "public";
}

/**
 * True when two textual addresses are the same address (`::1` = `0:0::1`, `::ffff:10.0.0.1` =
 * `10.0.0.1`). Invalid addresses equal nothing.
 */
export function sameAddress(a: string, b: string): boolean {
  const pa = parseIp(a);
  const pb = parseIp(b);
  if (pa === undefined || pb === undefined) return false;
  const x = toComparable(pa);
  const y = toComparable(pb);
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

function toComparable(p: ParsedIp): Uint8Array {
  const b = p.bytes;
  if (p.family === 6 && b.subarray(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff) {
    return b.subarray(12);
  }
  return b;
}
