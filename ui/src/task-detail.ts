import { Code, ConnectError } from "@connectrpc/connect";
import type { Task, TaskEvent } from "../../gen/taskmesh/v1/task_pb.js";
import { TaskStatus } from "../../gen/taskmesh/v1/task_pb.js";
import { api, isAbort } from "./api.js";
import { h, replace } from "./dom.js";
import { clock, durationText, isTerminal, json, priorityName, statusName } from "./format.js";
import { progressBar, statusBadge } from "./task-list.js";
import type { View, ViewContext } from "./view.js";

/** Most events kept on the page (the oldest go first). */
const MAX_EVENTS = 500;

/**
 * One task, live: its fields, progress and events through WatchTask (history first, then new
 * events until the terminal one; reconnects after an error and skips events already shown),
 * with Cancel and Retry buttons.
 */
export function taskDetailView(ctx: ViewContext, taskId: string): View {
  const status = h("span", { id: "task-status", "data-status": "" });
  const watchState = h("span", { id: "watch-state", class: "watch-state" }, "connecting…");
  const cancel = h("button", { id: "cancel-task", class: "danger", disabled: true }, "Cancel");
  const retry = h("button", { id: "retry-task", disabled: true }, "Retry");
  const progress = h("div", { id: "task-progress", class: "task-progress", "data-progress": "0" });
  const progressMessage = h("div", { id: "task-progress-message", class: "muted" });
  const fields = h("dl", { class: "fields", id: "task-fields" });
  const payload = h("pre", { class: "json", id: "task-payload" });
  const result = h("pre", { class: "json", id: "task-result" });
  const errorBox = h("div", { id: "task-error", class: "task-error", hidden: true });
  const events = h("tbody", { id: "task-events" });
  const el = h(
    "div",
    { class: "view task-detail" },
    h(
      "div",
      { class: "view-head" },
      h("h1", {}, "Task ", h("code", { id: "task-id" }, taskId)),
      status,
      watchState,
      h("span", { class: "spacer" }),
      cancel,
      retry,
    ),
    h("section", { class: "panel" }, progress, progressMessage, errorBox, fields),
    h(
      "div",
      { class: "grid-2" },
      h("section", { class: "panel" }, h("h2", {}, "Payload"), payload),
      h("section", { class: "panel" }, h("h2", {}, "Result"), result),
    ),
    h(
      "section",
      { class: "panel" },
      h("h2", {}, "Events"),
      h(
        "table",
        { class: "table events" },
        h("thead", {}, h("tr", {}, ["#", "Time", "Event", "Detail"].map((c) => h("th", {}, c)))),
        events,
      ),
    ),
  );

  let task: Task | undefined;
  let lastSeq = 0n;
  let watching = false;

  const show = (t: Task): void => {
    task = t;
    const name = statusName(t.status);
    status.dataset.status = name;
    replace(status, statusBadge(t.status));
    progress.dataset.progress = String(t.progress);
    replace(progress, progressBar(t.progress));
    progressMessage.textContent = t.progressMessage;
    cancel.disabled = isTerminal(t.status);
    retry.disabled = t.status !== TaskStatus.FAILED && t.status !== TaskStatus.CANCELLED;
    if (t.error !== undefined && (t.error.code !== "" || t.error.message !== "")) {
      errorBox.hidden = false;
      replace(
        errorBox,
        h("strong", {}, t.error.code),
        ` ${t.error.message}`,
        t.error.retryable ? h("span", { class: "muted" }, " (retryable)") : null,
      );
    } else {
      errorBox.hidden = true;
    }
    const labels = Object.entries(t.labels).map(([k, v]) => `${k}=${v}`).join(", ");
    replace(
      fields,
      field("Type", h("code", {}, t.type)),
      field("Queue", t.queue),
      field("Priority", priorityName(t.priority)),
      field("Attempt", t.maxAttempts > 0 ? `${t.attempt} of ${t.maxAttempts}` : String(t.attempt)),
      field("Worker", t.workerId === "" ? "—" : h("code", {}, t.workerId)),
      field("Tenant", t.tenant),
      field("Created", clock(t.createdAt)),
      field("Scheduled", clock(t.scheduledAt)),
      field("Started", clock(t.startedAt)),
      field("Finished", clock(t.finishedAt)),
      field("Timeout", durationText(t.timeout)),
      t.idempotencyKey !== "" ? field("Idempotency key", t.idempotencyKey) : null,
      labels !== "" ? field("Labels", labels) : null,
      t.affinityKey !== "" ? field("Affinity key", t.affinityKey) : null,
    );
    payload.textContent = t.payload === undefined ? "—" : json(t.payload);
    result.textContent = t.result === undefined ? "—" : json(t.result);
  };

  const addEvent = (ev: TaskEvent): void => {
    const [kind, detail] = describeEvent(ev);
    events.prepend(
      h(
        "tr",
        { class: `event event-${kind}` },
        h("td", {}, ev.sequence.toString()),
        h("td", {}, clock(ev.time)),
        h("td", {}, kind),
        h("td", {}, detail),
      ),
    );
    while (events.childElementCount > MAX_EVENTS) events.lastElementChild?.remove();
  };

  const watch = async (): Promise<void> => {
    if (watching) return;
    watching = true;
    let backoff = 500;
    try {
      while (!ctx.signal.aborted) {
        watchState.textContent = "● live";
        watchState.className = "watch-state live";
        try {
          for await (const ev of api.tasks.watchTask({ taskId }, { signal: ctx.signal })) {
            backoff = 500;
            // A reconnect replays the history: skip what is shown already.
            if (ev.sequence <= lastSeq) continue;
            lastSeq = ev.sequence;
            addEvent(ev);
            if (ev.task !== undefined) show(ev.task);
          }
          if (task !== undefined && isTerminal(task.status)) {
            watchState.textContent = "finished";
            watchState.className = "watch-state ended";
            return;
          }
        } catch (err) {
          if (isAbort(err, ctx.signal)) return;
          ctx.reportError("WatchTask", err);
          if (err instanceof ConnectError && (err.code === Code.NotFound || err.code === Code.PermissionDenied || err.code === Code.Unauthenticated)) {
            watchState.textContent = "not watching";
            watchState.className = "watch-state ended";
            return;
          }
        }
        watchState.textContent = "reconnecting…";
        watchState.className = "watch-state retry";
        await new Promise((r) => setTimeout(r, backoff));
        backoff = Math.min(backoff * 2, 10_000);
      }
    } finally {
      watching = false;
    }
  };

  cancel.addEventListener("click", () => {
    cancel.disabled = true;
    api.tasks.cancelTask({ taskId, reason: "cancelled from the dashboard" }, { signal: ctx.signal }).then(
      (t) => {
        ctx.clearError();
        // A running task answers while still RUNNING (its worker aborts it next) and that answer
        // can arrive after the watch already showed CANCELLED: only a final answer is news.
        if (isTerminal(t.status)) show(t);
      },
      (err: unknown) => {
        if (isAbort(err, ctx.signal)) return;
        cancel.disabled = task !== undefined && isTerminal(task.status);
        ctx.reportError("CancelTask", err);
      },
    );
  });
  retry.addEventListener("click", () => {
    retry.disabled = true;
    api.tasks.retryTask({ taskId }, { signal: ctx.signal }).then(
      (t) => {
        ctx.clearError();
        show(t);
        void watch();
      },
      (err: unknown) => {
        if (isAbort(err, ctx.signal)) return;
        retry.disabled = false;
        ctx.reportError("RetryTask", err);
      },
    );
  });

  // Show the task at once; the watch brings its history and every change after.
  api.tasks.getTask({ taskId }, { signal: ctx.signal, timeoutMs: 10_000 }).then(
    (t) => {
      if (lastSeq === 0n) show(t);
    },
    (err: unknown) => {
      if (!isAbort(err, ctx.signal)) ctx.reportError("GetTask", err);
    },
  );
  void watch();
  return { el, dispose() {} };
}

function field(name: string, value: Node | string): HTMLElement[] {
  return [h("dt", {}, name), h("dd", {}, value)];
}

/** An event's kind and one line of detail. */
function describeEvent(ev: TaskEvent): [string, string] {
  const e = ev.event;
  switch (e.case) {
    case "statusChange": {
      const c = e.value;
      const from = c.from === TaskStatus.UNSPECIFIED ? "submitted" : statusName(c.from);
      const parts = [`${from} → ${statusName(c.to)}`];
      if (c.attempt > 0) parts.push(`attempt ${c.attempt}`);
      if (c.workerId !== "") parts.push(`worker ${c.workerId}`);
      if (c.error !== undefined && c.error.code !== "") parts.push(`${c.error.code}: ${c.error.message}`);
      return ["status", parts.join(" · ")];
    }
    case "progress":
      return ["progress", `${e.value.progress}%${e.value.message !== "" ? ` ${e.value.message}` : ""}`];
    case "log":
      return ["log", e.value.line];
    case undefined:
      return ["event", ""];
  }
}
