import { createClient } from "@connectrpc/connect";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { ScheduleService } from "../../gen/taskmesh/v1/schedule_service_pb.js";
import { TaskStatus } from "../../gen/taskmesh/v1/task_pb.js";
import { gatewayClients, gatewayTransport, type GatewayClients } from "../support/clients.js";
import { uniquePrefix } from "../support/ids.js";
import { startMesh, type Mesh } from "../support/mesh.js";
import { waitFor } from "../support/wait.js";

describe("recurring schedules through the gateway, with two scheduler replicas", () => {
  let mesh: Mesh;
  let c: GatewayClients;
  beforeAll(async () => {
    mesh = await startMesh({
      etcdEndpoint: inject("etcdEndpoint"),
      redisUrl: inject("redisUrl"),
      prefix: uniquePrefix("sched"),
      workers: 1,
      schedulers: 2,
    });
    c = gatewayClients(mesh.gateway.address, mesh.apiKey);
  });
  afterAll(async () => {
    await mesh?.close();
  });

  it("enqueues exactly one task per tick, stops when paused and shows the next run", async () => {
    const schedules = createClient(ScheduleService, gatewayTransport(mesh.gateway.address, mesh.apiKey));
    const s = await schedules.createSchedule({
      spec: { case: "interval", value: durationFromMs(1000) },
      task: { type: "noop", labels: { origin: "e2e" } },
    });
    expect(s.nextRunAt).toBeDefined();
    const listed = async () =>
      (await c.tasks.listTasks({ label: `schedule_id=${s.id}`, pageSize: 100 })).tasks;
    const first = await waitFor(async () => {
      const ts = await listed();
      return ts.length >= 3 ? ts : undefined;
    }, { timeoutMs: 10_000, intervalMs: 100 });
    // One task per tick: the scheduled times of the tasks are distinct and one interval apart.
    const got = await schedules.getSchedule({ scheduleId: s.id });
    expect(got.lastTaskId).not.toBe("");
    const created = first.map((t) => Number(t.createdAt?.seconds ?? 0n) * 1000 + (t.createdAt?.nanos ?? 0) / 1e6).sort();
    for (let i = 1; i < created.length; i++) expect((created[i] as number) - (created[i - 1] as number)).toBeGreaterThan(500);
    await waitFor(async () => (await listed()).every((t) => t.status === TaskStatus.SUCCEEDED));

    const paused = await schedules.pauseSchedule({ scheduleId: s.id });
    expect(paused.paused).toBe(true);
    // A paused schedule has no next run, so the ticker has nothing to fire (that a paused schedule
    // never fires is tested deterministically, with explicit clocks, in test/integration/schedules).
    expect(paused.nextRunAt).toBeUndefined();
    expect((await schedules.getSchedule({ scheduleId: s.id })).nextRunAt).toBeUndefined();
    await schedules.deleteSchedule({ scheduleId: s.id });
    await expect(schedules.getSchedule({ scheduleId: s.id })).rejects.toMatchObject({ code: 5 });
  });
});
