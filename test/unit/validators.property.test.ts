/**
 * Property-based tests (fast-check, fixed seed, bounded runs) of the pure parts that meet client
 * input first: the task validator and the REST router. Whatever comes in, the answer is a valid
 * result or the client's error naming what is wrong, never another exception. The same input
 * over the wire is fuzzed end to end in test/e2e/bad-input.test.ts.
 */
import { create, type JsonObject } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { ClusterService } from "../../gen/taskmesh/v1/cluster_service_pb.js";
import { ConfigService } from "../../gen/taskmesh/v1/config_service_pb.js";
import { ScheduleService } from "../../gen/taskmesh/v1/schedule_service_pb.js";
import { SubmitTaskRequestSchema } from "../../gen/taskmesh/v1/task_pb.js";
import { TaskService } from "../../gen/taskmesh/v1/task_service_pb.js";
import { LIMITS } from "../../lib/task-types.js";
import { PathDecodeError, RestRouter, restBindings } from "../../services/gateway/rest/route-template.js";
import { DEFAULT_SUBMIT, toNewTask } from "../../services/scheduler/submit.js";

const SEED = 20261202;
const known = new Set(["noop", "sleep", "file_operation"]);
const now = 1_800_000_000_000;
/** The field paths the validator may name (`tasks[3].payload: …` comes with a path prefix). */
const FIELD = /^(type|queue|payload|priority|max_attempts|delay|run_at|timeout|backoff\.\w+|result_ttl|idempotency_key|labels(\[.*\])?|traceparent)[:\s[]/;

describe("the task validator under arbitrary input", () => {
  it("returns a task within every limit, or INVALID_ARGUMENT naming the field", () => {
    const name = fc.oneof(fc.constantFrom("noop", "sleep", "", "default", "q"), fc.string({ maxLength: 250 }));
    const payload = fc.oneof(
      fc.dictionary(fc.string({ maxLength: 10 }), fc.jsonValue({ maxDepth: 6 }), { maxKeys: 5 }).map((d) => JSON.parse(JSON.stringify(d)) as JsonObject),
      fc.integer({ min: 1, max: 60 }).map((depth) => {
        let v: JsonObject = { leaf: 1 };
        for (let i = 0; i < depth; i++) v = { n: v };
        return v;
      }),
    );
    fc.assert(
      fc.property(
        name,
        name,
        payload,
        fc.integer({ min: -5, max: 10 }),
        fc.integer({ min: -100, max: 1000 }),
        fc.option(fc.integer({ min: -1000, max: 1e9 }), { nil: undefined }),
        fc.option(fc.integer({ min: 0, max: 4e12 }), { nil: undefined }),
        fc.dictionary(fc.string({ maxLength: 30 }), fc.string({ maxLength: 30 }), { maxKeys: 4 }),
        (type, queue, p, priority, maxAttempts, delayMs, runAt, labels) => {
          const req = create(SubmitTaskRequestSchema, {
            type,
            queue,
            payload: p,
            priority,
            maxAttempts,
            labels,
            ...(delayMs !== undefined ? { delay: durationFromMs(delayMs) } : {}),
            ...(runAt !== undefined ? { runAt: timestampFromMs(runAt) } : {}),
          });
          let task;
          try {
            task = toNewTask(req, "acme", known, DEFAULT_SUBMIT, now);
          } catch (err) {
            expect(err).toBeInstanceOf(ConnectError);
            expect((err as ConnectError).code).toBe(Code.InvalidArgument);
            expect((err as ConnectError).rawMessage).toMatch(FIELD);
            return;
          }
          expect(known.has(task.type)).toBe(true);
          expect(task.queue.length).toBeGreaterThan(0);
          expect(task.queue.length).toBeLessThanOrEqual(LIMITS.maxNameLength);
          expect(Buffer.byteLength(JSON.stringify(task.payload))).toBeLessThanOrEqual(DEFAULT_SUBMIT.maxPayloadBytes);
          expect(task.maxAttempts).toBeGreaterThanOrEqual(1);
        },
      ),
      { seed: SEED, numRuns: 2000 },
    );
  });
});

describe("the REST router under arbitrary paths", () => {
  const router = new RestRouter(restBindings([TaskService, ScheduleService, ClusterService, ConfigService]));

  it("matches a route, matches none, or refuses malformed percent-encoding: nothing else", () => {
    const segment = fc.oneof(
      fc.constantFrom("v1", "tasks", "config", "schedules", "cluster", "workers", "queues", "%2F", "%", "%zz", "..", ":cancel", "a:b", ""),
      fc.string({ maxLength: 12 }),
    );
    fc.assert(
      fc.property(fc.constantFrom("GET", "POST", "DELETE", "PATCH", "PUT", "OPTIONS"), fc.array(segment, { maxLength: 6 }), (method, parts) => {
        const path = `/${parts.join("/")}`;
        try {
          const m = router.match(method, path);
          expect(m).toBeDefined();
        } catch (err) {
          expect(err).toBeInstanceOf(PathDecodeError);
        }
      }),
      { seed: SEED, numRuns: 3000 },
    );
  });
});
