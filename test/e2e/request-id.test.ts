import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { ulid } from "ulid";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { SchedulerService } from "../../gen/taskmesh/v1/scheduler_service_pb.js";
import { REQUEST_ID_HEADER, TENANT_HEADER } from "../../lib/task-types.js";
import { uniquePrefix } from "../support/ids.js";
import { startMesh, type Mesh } from "../support/mesh.js";

describe("scheduler: submits carrying the gateway's request id", () => {
  let mesh: Mesh;
  beforeAll(async () => {
    mesh = await startMesh({ etcdEndpoint: inject("etcdEndpoint"), redisUrl: inject("redisUrl"), prefix: uniquePrefix("reqid"), workers: 0 });
  });
  afterAll(async () => {
    await mesh?.close();
  });

  it("derives the task ids from it (a repeat stores nothing), keeps tenants apart, and refuses a malformed one naming the header", async () => {
    const scheduler = createClient(SchedulerService, createGrpcTransport({ baseUrl: `http://${mesh.schedulers[0]?.address}` }));
    const requestId = ulid();
    const as = (tenant: string, id = requestId) => ({ headers: { [TENANT_HEADER]: tenant, [REQUEST_ID_HEADER]: id } });
    const batch = { tasks: [{ type: "noop" }, { type: "noop", queue: "other" }, { type: "noop" }] };
    const first = await scheduler.submitTasks(batch, as("acme"));
    const again = await scheduler.submitTasks(batch, as("acme"));
    expect(again.tasks.map((t) => t.id)).toEqual(first.tasks.map((t) => t.id));
    expect(first.tasks.map((t) => t.id.slice(0, 10))).toEqual([0, 1, 2].map(() => requestId.slice(0, 10)));
    expect([...first.tasks.map((t) => t.id.slice(0, 24))].sort()).toEqual(first.tasks.map((t) => t.id.slice(0, 24)));
    const listed = await scheduler.listTasks({ pageSize: 100 }, { headers: { [TENANT_HEADER]: "acme" } });
    expect(listed.tasks.map((t) => t.id).sort()).toEqual(first.tasks.map((t) => t.id).sort());
    const single = await scheduler.submitTask({ type: "noop" }, as("acme", ulid()));
    const other = await scheduler.submitTasks(batch, as("globex"));
    expect(other.tasks.map((t) => t.id)).not.toContain(first.tasks[0]?.id);
    expect(other.tasks.every((t) => t.tenant === "globex")).toBe(true);
    expect(single.tenant).toBe("acme");
    for (const bad of ["nope", requestId.toLowerCase(), `${requestId}X`]) {
      let err: ConnectError | undefined;
      try {
        await scheduler.submitTask({ type: "noop" }, as("acme", bad));
      } catch (e) {
        err = ConnectError.from(e);
      }
      expect(err?.code).toBe(Code.InvalidArgument);
      expect(err?.rawMessage).toMatch(new RegExp(`^${REQUEST_ID_HEADER}: `));
    }
    // Without the header ids are made as before.
    const plain = await scheduler.submitTask({ type: "noop" }, { headers: { [TENANT_HEADER]: "acme" } });
    expect(plain.id).toMatch(/^[0-9A-HJKMNP-TV-Z]{26}$/);
  });
});
