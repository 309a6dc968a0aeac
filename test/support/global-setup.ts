import "vitest";
import type { TestProject } from "vitest/node";
import { startEtcd, startRedis, type Backend } from "./backends.js";

declare module "vitest" {
  export interface ProvidedContext {
    /** `redis://127.0.0.1:port` of the Redis started for this run. */
    redisUrl: string;
    /** `127.0.0.1:port` of the etcd started for this run. */
    etcdEndpoint: string;
  }
}

let backends: Backend[] = [];

/** Starts one real Redis and one real etcd for the whole test run; tests isolate by prefix. */
export async function setup(project: TestProject): Promise<void> {
  const [redis, etcd] = await Promise.all([startRedis(), startEtcd()]);
  backends = [redis, etcd];
  project.provide("redisUrl", redis.address);
  project.provide("etcdEndpoint", etcd.address);
}

/** Stops what setup started. */
export async function teardown(): Promise<void> {
  await Promise.all(backends.map((b) => b.stop()));
}
