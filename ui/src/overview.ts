import type { QueueStats, WorkerInfo } from "../../gen/taskmesh/v1/cluster_service_pb.js";
import { describeError } from "./api.js";
import { h, replace } from "./dom.js";
import { clock, durationText, rate, span } from "./format.js";
import { POLL_MS, SAMPLE_TASKS, WINDOW_MS } from "./monitor.js";
import { sparkline } from "./sparkline.js";
import type { View, ViewContext } from "./view.js";

const BUCKETS = 30;

/**
 * The cluster overview: throughput, latency, queue depth and slots in use (with sparklines over
 * the last five minutes), scheduler replicas and the leader, workers and their slots, queues.
 */
export function overviewView(ctx: ViewContext): View {
  const cards = h("section", { class: "cards", id: "overview-cards" });
  const problems = h("div", { class: "inline-errors", id: "overview-errors" });
  const schedulers = h("section", { class: "panel", id: "schedulers" });
  const workers = h("section", { class: "panel", id: "workers" });
  const queues = h("section", { class: "panel", id: "queues" });
  const updated = h("span", { class: "muted", id: "overview-updated" }, "loading…");
  const el = h(
    "div",
    { class: "view overview" },
    h("div", { class: "view-head" }, h("h1", {}, "Cluster overview"), updated),
    problems,
    cards,
    h("div", { class: "grid-2" }, schedulers, queues),
    workers,
    h(
      "p",
      { class: "footnote" },
      `Throughput and latency are computed in this browser from the newest ${SAMPLE_TASKS} tasks, read every ${POLL_MS / 1000} s; ` +
        "latency is created → finished. Charts cover the last 5 minutes in 10 s steps.",
    ),
  );

  const render = (): void => {
    const m = ctx.monitor;
    const now = Date.now();
    replace(
      problems,
      [...m.errors].map(([what, err]) => {
        const e = describeError(err);
        return h("div", { class: "error-line" }, h("strong", { class: "err-code" }, e.code), ` ${what}: ${e.message}`);
      }),
    );
    const buckets = m.finished.buckets(now, WINDOW_MS / BUCKETS, BUCKETS);
    const minute = m.finished.summary(now, 60_000);
    const st = m.status;
    const totalSlots = st?.workers.reduce((n, w) => n + w.slots, 0) ?? 0;
    replace(
      cards,
      card(
        "throughput",
        "Throughput",
        `${rate(minute.perSecond)} /s`,
        `${minute.finished} finished in the last minute`,
        sparkline(
          buckets.map((b) => b.perSecond),
          { label: "tasks finished per second, last 5 minutes" },
        ),
      ),
      card(
        "latency",
        "Latency p50 / p95",
        `${span(minute.p50 ?? undefined)} / ${span(minute.p95 ?? undefined)}`,
        `queue wait p50 ${span(minute.waitP50 ?? undefined)}`,
        sparkline(
          buckets.map((b) => b.p50),
          { label: "median latency per 10 s, last 5 minutes", minMax: 100, area: false },
        ),
      ),
      card(
        "queued",
        "Queued",
        String(m.queued.last ?? "—"),
        `${m.running.last ?? "—"} running`,
        sparkline(m.queued.resample(now, BUCKETS * 2), { label: "tasks queued, last 5 minutes" }),
      ),
      card(
        "slots",
        "Slots in use",
        st === undefined ? "—" : `${m.slotsUsed.last ?? 0} / ${totalSlots}`,
        st === undefined ? "" : `${st.workers.length} workers`,
        sparkline(m.slotsUsed.resample(now, BUCKETS * 2), {
          label: "worker slots in use, last 5 minutes",
          ...(totalSlots > 0 ? { max: totalSlots } : {}),
        }),
      ),
    );
    updated.textContent = m.statusAtMs === 0 ? "loading…" : `updated ${clock(m.statusAtMs)}`;
  };

  // Tables change only when a poll brings news (re-rendering them every second would fight the
  // user's text selection).
  let renderedAt = -1;
  const renderTables = (): void => {
    const st = ctx.monitor.status;
    if (st === undefined || ctx.monitor.statusAtMs === renderedAt) return;
    renderedAt = ctx.monitor.statusAtMs;
    replace(
      schedulers,
      h("h2", {}, `Schedulers (${st.schedulers.length})`),
      table(
        ["Replica", "Address", "Role"],
        st.schedulers.map((s) => [
          h("code", {}, s.id),
          s.address,
          s.leader ? h("span", { class: "badge leader" }, "leader") : h("span", { class: "badge" }, "follower"),
        ]),
        "No scheduler is registered.",
      ),
    );
    replace(
      workers,
      h("h2", {}, `Workers (${st.workers.length})`),
      table(
        ["Worker", "Address", "Slots in use", "Task types", "Host", "Version", "Started"],
        st.workers.map((w) => workerRow(w)),
        "No worker is registered.",
        "workers-table",
      ),
    );
    replace(
      queues,
      h("h2", {}, `Queues (${st.queues.length})`),
      table(
        ["Queue", "Queued", "Running", "Delayed", "Retry wait", "Dead", "Oldest queued"],
        st.queues.map((q) => queueRow(q)),
        "No queue has had a task yet.",
        "queues-table",
      ),
    );
  };

  const unsubscribe = ctx.monitor.subscribe(() => {
    render();
    renderTables();
  });
  // The charts move with time even between polls.
  const timer = setInterval(render, 1000);
  render();
  renderTables();
  ctx.monitor.refresh();
  return {
    el,
    dispose() {
      unsubscribe();
      clearInterval(timer);
    },
  };
}

function card(id: string, title: string, value: string, sub: string, chart: SVGSVGElement): HTMLElement {
  return h(
    "div",
    { class: "card", id: `card-${id}` },
    h("div", { class: "card-title" }, title),
    h("div", { class: "card-value" }, value),
    h("div", { class: "card-sub" }, sub),
    chart,
  );
}

function workerRow(w: WorkerInfo): (Node | string)[] {
  const pct = w.slots > 0 ? Math.min(100, (100 * w.slotsUsed) / w.slots) : 0;
  const bar = h("div", { class: "meter", title: `${w.slotsUsed} of ${w.slots} slots in use` }, h("div", { class: "meter-fill" }));
  (bar.firstElementChild as HTMLElement).style.width = `${pct}%`;
  return [
    h("code", { class: "worker-id" }, w.id),
    w.address,
    h("div", { class: "slots" }, bar, h("span", {}, `${w.slotsUsed} / ${w.slots}`)),
    h("div", { class: "chips" }, w.taskTypes.map((t) => h("span", { class: "chip" }, t))),
    w.host,
    w.version,
    clock(w.startedAt),
  ];
}

function queueRow(q: QueueStats): (Node | string)[] {
  return [
    h("span", {}, h("code", {}, q.name), q.paused ? h("span", { class: "badge warn" }, "paused") : null),
    String(q.queued),
    String(q.running),
    String(q.delayed),
    String(q.retryWait),
    String(q.dead),
    durationText(q.oldestQueuedAge),
  ];
}

/** A simple table; `empty` is shown as its only row when there are no rows. */
export function table(head: string[], rows: (Node | string)[][], empty: string, id?: string): HTMLTableElement {
  return h(
    "table",
    { class: "table", id },
    h("thead", {}, h("tr", {}, head.map((c) => h("th", {}, c)))),
    h(
      "tbody",
      {},
      rows.length === 0
        ? h("tr", {}, h("td", { colspan: head.length, class: "empty" }, empty))
        : rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c)))),
    ),
  );
}
