import type { JsonObject } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { Priority } from "../../gen/taskmesh/v1/task_pb.js";
import { api, isAbort } from "./api.js";
import { h, replace } from "./dom.js";
import { json, PRIORITIES, priorityName } from "./format.js";
import type { View, ViewContext } from "./view.js";

/** Example payloads of the built-in task types (the README lists them). */
const EXAMPLES: Readonly<Record<string, JsonObject>> = {
  data_processing: { data: [{ x: 1 }, { x: 2 }, { x: 3 }], item_delay_ms: 200 },
  sleep: { ms: 5000 },
  noop: {},
  fail: { message: "boom", retryable: false },
  health_check: {},
  http_request: { method: "GET", url: "https://example.com/" },
  file_operation: { operation: "write", path: "hello.txt", content: "hello" },
};

/** The submit form: type, payload JSON, queue, priority and the common options. */
export function submitView(ctx: ViewContext): View {
  const known = new Set(Object.keys(EXAMPLES));
  for (const w of ctx.monitor.status?.workers ?? []) for (const t of w.taskTypes) known.add(t);
  const type = h("input", { id: "submit-type", name: "type", list: "task-types", required: true, placeholder: "data_processing", autocomplete: "off" });
  const types = h("datalist", { id: "task-types" }, [...known].sort().map((t) => h("option", { value: t })));
  const payload = h("textarea", { id: "submit-payload", name: "payload", rows: 10, spellcheck: false }, "{}");
  const queue = h("input", { id: "submit-queue", name: "queue", value: "default" });
  const priority = h(
    "select",
    { id: "submit-priority", name: "priority" },
    PRIORITIES.map((p) => h("option", { value: priorityName(p), selected: p === Priority.NORMAL }, priorityName(p))),
  );
  const maxAttempts = h("input", { id: "submit-max-attempts", name: "max_attempts", type: "number", min: 1, max: 100, placeholder: "default" });
  const timeout = h("input", { id: "submit-timeout", name: "timeout", type: "number", min: 0, step: "any", placeholder: "none" });
  const delay = h("input", { id: "submit-delay", name: "delay", type: "number", min: 0, step: "any", placeholder: "0" });
  const idempotency = h("input", { id: "submit-idempotency", name: "idempotency_key", placeholder: "optional" });
  const labels = h("input", { id: "submit-labels", name: "labels", placeholder: "team=data, env=dev" });
  const button = h("button", { type: "submit", id: "submit-button", class: "primary" }, "Submit");
  const status = h("span", { class: "muted", id: "submit-status" });
  let payloadTouched = false;
  payload.addEventListener("input", () => {
    payloadTouched = true;
  });
  const fillExample = (): void => {
    const ex = EXAMPLES[type.value.trim()];
    if (ex !== undefined) payload.value = json(ex);
  };
  // The example appears as soon as the type names a known one, unless the user wrote a payload.
  type.addEventListener("input", () => {
    if (!payloadTouched) fillExample();
  });

  const form = h(
    "form",
    {
      class: "panel form",
      id: "submit-form",
      on: {
        submit: (ev) => {
          ev.preventDefault();
          void submit();
        },
      },
    },
    h("label", {}, h("span", {}, "Type"), type, types),
    h(
      "label",
      { class: "wide" },
      h("span", {}, "Payload (JSON object) ", h("button", { type: "button", class: "link", on: { click: fillExample } }, "example")),
      payload,
    ),
    h("label", {}, h("span", {}, "Queue"), queue),
    h("label", {}, h("span", {}, "Priority"), priority),
    h("label", {}, h("span", {}, "Max attempts"), maxAttempts),
    h("label", {}, h("span", {}, "Timeout (s)"), timeout),
    h("label", {}, h("span", {}, "Delay (s)"), delay),
    h("label", {}, h("span", {}, "Idempotency key"), idempotency),
    h("label", { class: "wide" }, h("span", {}, "Labels"), labels),
    h("div", { class: "actions wide" }, button, status),
  );

  const submit = async (): Promise<void> => {
    let request;
    try {
      request = {
        type: type.value.trim(),
        payload: parsePayload(payload.value),
        queue: queue.value.trim(),
        priority: PRIORITIES.find((p) => priorityName(p) === priority.value) ?? Priority.NORMAL,
        maxAttempts: maxAttempts.value === "" ? 0 : Number(maxAttempts.value),
        ...(timeout.value !== "" && Number(timeout.value) > 0 ? { timeout: durationFromMs(Number(timeout.value) * 1000) } : {}),
        ...(delay.value !== "" && Number(delay.value) > 0 ? { delay: durationFromMs(Number(delay.value) * 1000) } : {}),
        idempotencyKey: idempotency.value.trim(),
        labels: parseLabels(labels.value),
      };
    } catch (err) {
      ctx.reportError("SubmitTask", err);
      return;
    }
    button.disabled = true;
    status.textContent = "submitting…";
    try {
      const task = await api.tasks.submitTask(request, { signal: ctx.signal, timeoutMs: 15_000 });
      ctx.clearError();
      ctx.navigate(`#/tasks/${encodeURIComponent(task.id)}`);
    } catch (err) {
      if (isAbort(err, ctx.signal)) return;
      ctx.reportError("SubmitTask", err);
      button.disabled = false;
      status.textContent = "";
    }
  };

  const el = h("div", { class: "view submit" }, h("div", { class: "view-head" }, h("h1", {}, "Submit a task")), form);
  return { el, dispose() {} };
}

/** The payload textarea as a JSON object, or INVALID_ARGUMENT naming the field. */
function parsePayload(text: string): JsonObject {
  if (text.trim() === "") return {};
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (err) {
    throw new ConnectError(`payload: not valid JSON (${(err as Error).message})`, Code.InvalidArgument);
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new ConnectError("payload: must be a JSON object", Code.InvalidArgument);
  }
  return v as JsonObject;
}

/** `a=1, b=2` as a map, or INVALID_ARGUMENT. */
function parseLabels(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of text.split(",")) {
    const p = part.trim();
    if (p === "") continue;
    const eq = p.indexOf("=");
    if (eq <= 0) throw new ConnectError(`labels: "${p}" must look like key=value`, Code.InvalidArgument);
    out[p.slice(0, eq).trim()] = p.slice(eq + 1).trim();
  }
  return out;
}
