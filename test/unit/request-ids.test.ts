import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { ulid } from "ulid";
import { SubmitTaskRequestSchema } from "../../gen/taskmesh/v1/task_pb.js";
import { DEFAULT_SUBMIT, isRequestId, requestTaskIds, toNewTask } from "../../services/scheduler/submit.js";
import { queueTag } from "../../services/scheduler/task-codec.js";

describe("task ids derived from a request id", () => {
  const requestId = ulid(1_800_000_000_000);

  it("are the same for the same request and tenant, in the order of the request's tasks", () => {
    const a = requestTaskIds(requestId, "acme");
    const b = requestTaskIds(requestId, "acme");
    const ids = Array.from({ length: 1000 }, (_, i) => a(i, "default"));
    expect(ids).toEqual(Array.from({ length: 1000 }, (_, i) => b(i, "default")));
    expect([...ids].sort()).toEqual(ids);
    expect(new Set(ids).size).toBe(1000);
    for (const id of ids) {
      expect(id).toMatch(/^[0-9A-HJKMNP-TV-Z]{26}$/);
      expect(id.slice(0, 10)).toBe(requestId.slice(0, 10));
      expect(id.endsWith(queueTag("default"))).toBe(true);
    }
    expect(a(3, "emails").endsWith(queueTag("emails"))).toBe(true);
    expect(a(3, "emails").slice(0, 24)).toBe(a(3, "default").slice(0, 24));
  });

  it("differ between requests and between tenants", () => {
    const other = ulid(1_800_000_000_000);
    expect(requestTaskIds(other, "acme")(0, "q")).not.toBe(requestTaskIds(requestId, "acme")(0, "q"));
    expect(requestTaskIds(requestId, "beta")(0, "q")).not.toBe(requestTaskIds(requestId, "acme")(0, "q"));
  });

  it("name the tasks toNewTask makes when given, and only well-formed request ids are accepted", () => {
    const ids = requestTaskIds(requestId, "acme");
    const t = toNewTask(create(SubmitTaskRequestSchema, { type: "noop", queue: "q1" }), "acme", new Set(["noop"]), DEFAULT_SUBMIT, 0, "", undefined, (q) => ids(0, q));
    expect(t.id).toBe(ids(0, "q1"));
    expect(isRequestId(requestId)).toBe(true);
    for (const bad of ["", "x", requestId.toLowerCase(), `${requestId}0`, `8${requestId.slice(1)}`, requestId.replace(/.$/, "U")]) {
      expect(isRequestId(bad), bad).toBe(false);
    }
  });
});
