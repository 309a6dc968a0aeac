import { randomBytes } from "node:crypto";

/** A unique key prefix for one test, so tests sharing Redis and etcd never see each other. */
export function uniquePrefix(name = "t"): string {
  return `${name}-${randomBytes(5).toString("hex")}`;
}
