import type { Task } from "../../gen/taskmesh/v1/task_pb.js";
import { TaskStatus } from "../../gen/taskmesh/v1/task_pb.js";
import { api, isAbort } from "./api.js";
import { h, replace } from "./dom.js";
import { clock, isTerminal, priorityName, STATUSES, statusName } from "./format.js";
import { table } from "./overview.js";
import type { View, ViewContext } from "./view.js";

const REFRESH_MS = 3000;
const PAGE_SIZES = [20, 50, 100, 200];

/** The list's filters, as kept in the route (`#/tasks?status=FAILED&type=sleep&queue=default`). */
export interface TaskFilters {
  status: TaskStatus;
  type: string;
  queue: string;
  pageSize: number;
}

/** Reads filters from a route's query string. */
export function parseFilters(query: URLSearchParams): TaskFilters {
  const named = query.get("status") ?? "";
  const status = STATUSES.find((s) => statusName(s) === named) ?? TaskStatus.UNSPECIFIED;
  const size = Number(query.get("size") ?? "50");
  return {
    status,
    type: query.get("type") ?? "",
    queue: query.get("queue") ?? "",
    pageSize: PAGE_SIZES.includes(size) ? size : 50,
  };
}

/** The route of a filtered list. */
export function filtersRoute(f: TaskFilters): string {
  const q = new URLSearchParams();
  if (f.status !== TaskStatus.UNSPECIFIED) q.set("status", statusName(f.status));
  if (f.type !== "") q.set("type", f.type);
  if (f.queue !== "") q.set("queue", f.queue);
  if (f.pageSize !== 50) q.set("size", String(f.pageSize));
  const qs = q.toString();
  return qs === "" ? "#/tasks" : `#/tasks?${qs}`;
}

/** The task list: filters by status, type and queue, newest first, paged with page tokens. */
export function taskListView(ctx: ViewContext, filters: TaskFilters): View {
  const status = h(
    "select",
    { id: "filter-status", name: "status" },
    h("option", { value: "" }, "any status"),
    STATUSES.map((s) => h("option", { value: statusName(s), selected: s === filters.status }, statusName(s))),
  );
  const type = h("input", { id: "filter-type", name: "type", placeholder: "any type", value: filters.type });
  const queue = h("input", { id: "filter-queue", name: "queue", placeholder: "any queue", value: filters.queue });
  const size = h(
    "select",
    { id: "filter-size", name: "size" },
    PAGE_SIZES.map((n) => h("option", { value: n, selected: n === filters.pageSize }, `${n} per page`)),
  );
  const form = h(
    "form",
    {
      class: "filters",
      id: "task-filters",
      on: {
        submit: (ev) => {
          ev.preventDefault();
          ctx.navigate(
            filtersRoute({
              status: STATUSES.find((s) => statusName(s) === status.value) ?? TaskStatus.UNSPECIFIED,
              type: type.value.trim(),
              queue: queue.value.trim(),
              pageSize: Number(size.value),
            }),
          );
        },
      },
    },
    h("label", {}, "Status ", status),
    h("label", {}, "Type ", type),
    h("label", {}, "Queue ", queue),
    h("label", {}, "Page ", size),
    h("button", { type: "submit", class: "primary" }, "Apply"),
    h("button", { type: "button", on: { click: () => ctx.navigate("#/tasks") } }, "Reset"),
  );
  const body = h("div", { id: "task-table" }, h("p", { class: "muted" }, "loading…"));
  const newer = h("button", { id: "page-newer", disabled: true }, "← Newer");
  const older = h("button", { id: "page-older", disabled: true }, "Older →");
  const pageInfo = h("span", { class: "muted", id: "page-info" });
  const el = h(
    "div",
    { class: "view tasks" },
    h("div", { class: "view-head" }, h("h1", {}, "Tasks"), h("a", { href: "#/submit", class: "button primary" }, "Submit a task")),
    form,
    body,
    h("div", { class: "pager" }, newer, pageInfo, older),
  );

  // tokens[i] is the page token of page i (page 0 has none).
  const tokens: string[] = [""];
  let page = 0;
  let next = "";
  let timer: ReturnType<typeof setTimeout> | undefined;
  let seq = 0;

  const load = async (): Promise<void> => {
    clearTimeout(timer);
    const mine = ++seq;
    try {
      const res = await api.tasks.listTasks(
        {
          status: filters.status,
          type: filters.type,
          queue: filters.queue,
          pageSize: filters.pageSize,
          pageToken: tokens[page] ?? "",
        },
        { signal: ctx.signal, timeoutMs: 10_000 },
      );
      if (mine !== seq) return;
      next = res.nextPageToken;
      replace(body, renderTasks(res.tasks));
      newer.disabled = page === 0;
      older.disabled = next === "";
      pageInfo.textContent = `page ${page + 1}${res.tasks.length < filters.pageSize && next !== "" ? " (partial: the server scans a bounded number of tasks per page)" : ""}`;
    } catch (err) {
      if (isAbort(err, ctx.signal)) return;
      ctx.reportError("ListTasks", err);
    }
    if (!ctx.signal.aborted) timer = setTimeout(() => void load(), REFRESH_MS);
  };
  newer.addEventListener("click", () => {
    if (page === 0) return;
    page--;
    void load();
  });
  older.addEventListener("click", () => {
    if (next === "") return;
    page++;
    tokens[page] = next;
    void load();
  });
  void load();
  return {
    el,
    dispose() {
      clearTimeout(timer);
    },
  };
}

function renderTasks(tasks: Task[]): HTMLElement {
  return table(
    ["Task", "Type", "Queue", "Priority", "Status", "Progress", "Attempt", "Created", "Worker"],
    tasks.map((t) => [
      h("a", { href: `#/tasks/${encodeURIComponent(t.id)}`, class: "task-link" }, h("code", {}, t.id)),
      t.type,
      t.queue,
      priorityName(t.priority),
      statusBadge(t.status),
      // Types that report no progress finish at 0%: say nothing rather than "0%" on a success.
      isTerminal(t.status) && t.progress === 0 ? h("span", { class: "muted" }, "—") : progressBar(t.progress),
      t.maxAttempts > 0 ? `${t.attempt} / ${t.maxAttempts}` : String(t.attempt),
      clock(t.createdAt),
      t.workerId === "" ? "—" : h("code", {}, t.workerId),
    ]),
    "No task matches.",
    "tasks-table",
  );
}

/** A coloured status label. */
export function statusBadge(s: TaskStatus): HTMLElement {
  const name = statusName(s);
  return h("span", { class: `badge status status-${name.toLowerCase().replace("_", "-")}` }, name);
}

/** A small progress bar with its percentage. */
export function progressBar(progress: number): HTMLElement {
  const fill = h("div", { class: "meter-fill" });
  fill.style.width = `${Math.max(0, Math.min(100, progress))}%`;
  return h("div", { class: "progress-cell" }, h("div", { class: "meter" }, fill), h("span", {}, `${progress}%`));
}
