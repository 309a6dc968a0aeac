import { existsSync } from "node:fs";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { chromium, type BrowserContext, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { ConfigService } from "../../gen/taskmesh/v1/config_service_pb.js";
import { TaskStatus } from "../../gen/taskmesh/v1/task_pb.js";
import { buildUi } from "../../scripts/build-ui.js";
import { gatewayClients, type GatewayClients } from "../support/clients.js";
import { uniquePrefix } from "../support/ids.js";
import { startMesh, type Mesh } from "../support/mesh.js";
import { waitFor } from "../support/wait.js";

const root = join(import.meta.dirname, "../..");
const SCREENSHOTS = join(root, "test-results", "screenshots");
/** Debian's package (`apt-get install chromium`); never a browser downloaded by Playwright. */
const CHROMIUM = "/usr/bin/chromium";
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

// One mesh, one browser and one page for the whole file: the steps build on each other the way
// a person would use the dashboard (sign in, submit, watch, cancel, browse, configure).
describe("web dashboard in headless Chromium", () => {
  let mesh: Mesh;
  let api: GatewayClients;
  let context: BrowserContext;
  let page: Page;
  let profile: string;
  let base: string;
  const pageErrors: string[] = [];
  const cspViolations: string[] = [];
  const requests: string[] = [];

  const shot = async (name: string): Promise<void> => {
    await page.screenshot({ path: join(SCREENSHOTS, `dashboard-${name}.png`), fullPage: true });
  };
  const text = async (selector: string): Promise<string> => (await page.locator(selector).textContent()) ?? "";

  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) {
      throw new Error(`${CHROMIUM} is missing: apt-get install -y --no-install-recommends chromium`);
    }
    // Build the bundle the gateway serves (ui/dist) every run, so the test never sees a stale one.
    const [built, m] = await Promise.all([
      buildUi(),
      startMesh({ etcdEndpoint: inject("etcdEndpoint"), redisUrl: inject("redisUrl"), prefix: uniquePrefix("ui"), config: true }),
    ]);
    expect(built.files).toContain("index.html");
    mesh = m;
    base = `http://${mesh.gateway.address}`;
    api = gatewayClients(mesh.gateway.address, mesh.apiKey);
    await mkdir(SCREENSHOTS, { recursive: true });
    profile = await mkdtemp(join(tmpdir(), "taskmesh-chromium-"));
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1360, height: 900 },
    });
    page = context.pages()[0] ?? (await context.newPage());
    page.setDefaultTimeout(20_000);
    page.on("pageerror", (err) => pageErrors.push(err.message));
    page.on("console", (msg) => {
      if (/Content.Security.Policy/i.test(msg.text())) cspViolations.push(msg.text());
    });
    page.on("request", (req) => requests.push(req.url()));
  });

  afterAll(async () => {
    await context?.close();
    if (profile !== undefined) await rm(profile, { recursive: true, force: true });
    await mesh?.close();
  });

  it("refuses a wrong API key with UNAUTHENTICATED, then signs in and shows the workers and the leader", async () => {
    const res = await page.goto(`${base}/ui`);
    expect(res?.status(), "the gateway serves the dashboard at /ui (createUiHandler in gateway.ts)").toBe(200);
    expect(res?.headers()["content-type"]).toBe("text/html; charset=utf-8");

    await page.fill("#api-key", "tm_wrong_key");
    await page.click("#sign-in");
    await expect.poll(() => text("#error-code")).toBe("UNAUTHENTICATED");
    expect(await text("#error-message")).toContain("API key");
    await shot("01-wrong-key");

    await page.fill("#api-key", mesh.apiKey);
    await page.click("#sign-in");
    await page.waitForSelector("#workers-table");
    expect(await page.isHidden("#error")).toBe(true);
    for (const w of mesh.workers) {
      await expect.poll(() => text("#workers-table")).toContain(w.name);
    }
    expect(await page.locator("#workers-table tbody tr").count()).toBe(mesh.workers.length);
    expect(await text("#schedulers")).toContain("leader");
    expect(await text("#workers-table")).toContain("data_processing");
    // The key stays in this tab's sessionStorage only.
    expect(await page.evaluate("sessionStorage.getItem('taskmesh.apiKey')")).toBe(mesh.apiKey);
    await shot("02-overview");
  });

  it("submits a data_processing task from the form and watches its progress reach 100 and SUCCEEDED", async () => {
    await page.click("nav a[data-route=submit]");
    await page.fill("#submit-type", "data_processing");
    const items = Array.from({ length: 8 }, (_, i) => ({ id: i, value: i + 1 }));
    await page.fill("#submit-payload", JSON.stringify({ data: items, item_delay_ms: 400 }, null, 2));
    await page.selectOption("#submit-priority", "HIGH");
    await shot("03-submit-form");
    await page.click("#submit-button");

    await page.waitForURL(/#\/tasks\/[0-9A-Z]+$/);
    const id = await text("#task-id");
    expect(id).toMatch(/^[0-9A-Z]{26}$/);
    // Follow the progress bar as the page shows it: it must move through values below 100.
    const seen = new Set<number>();
    await waitFor(
      async () => {
        const p = Number(await page.getAttribute("#task-progress", "data-progress"));
        seen.add(p);
        return p === 100;
      },
      { timeoutMs: 30_000, intervalMs: 50, what: "progress 100 on the page" },
    );
    expect([...seen].some((p) => p > 0 && p < 100), `progress seen: ${[...seen].join(", ")}`).toBe(true);
    await page.waitForSelector("#task-status[data-status=SUCCEEDED]");
    await expect.poll(() => text("#watch-state")).toBe("finished");
    const result = JSON.parse(await text("#task-result")) as { items_processed: number; processed_data: { value: number }[] };
    expect(result.items_processed).toBe(8);
    expect(result.processed_data.map((d) => d.value)).toEqual(items.map((d) => d.value * 2));
    expect(await page.locator("#task-events tr.event-progress").count()).toBeGreaterThanOrEqual(2);
    expect(await text("#task-events")).toContain("RUNNING → SUCCEEDED");
    expect(await text("#task-fields")).toContain("HIGH");
    await shot("04-task-succeeded");

    const t = await api.tasks.getTask({ taskId: id });
    expect(t.status).toBe(TaskStatus.SUCCEEDED);
    expect(t.progress).toBe(100);
  });

  it("shows a refused submit with its gRPC code and the field named", async () => {
    await page.click("nav a[data-route=submit]");
    await page.fill("#submit-type", "no_such_type");
    await page.fill("#submit-payload", "{}");
    await page.click("#submit-button");
    await expect.poll(() => text("#error-code")).toBe("INVALID_ARGUMENT");
    expect(await text("#error-what")).toBe("SubmitTask");
    expect(await text("#error-message")).toContain("type");
    expect(page.url()).toMatch(/#\/submit$/);
    await shot("05-submit-refused");

    // Malformed JSON is caught in the page, reported the same way.
    await page.fill("#submit-type", "noop");
    await page.fill("#submit-payload", "{ not json");
    await page.click("#submit-button");
    await expect.poll(() => text("#error-message")).toContain("payload: not valid JSON");
    expect(await text("#error-code")).toBe("INVALID_ARGUMENT");
    await page.click("#error .dismiss");
    expect(await page.isHidden("#error")).toBe(true);
  });

  it("cancels a long sleep task with the Cancel button", async () => {
    await page.click("nav a[data-route=submit]");
    await page.fill("#submit-type", "sleep");
    await page.fill("#submit-payload", JSON.stringify({ ms: 600_000 }));
    await page.click("#submit-button");
    await page.waitForURL(/#\/tasks\/[0-9A-Z]+$/);
    const id = await text("#task-id");
    await page.waitForSelector("#task-status[data-status=RUNNING]");
    expect(await page.isEnabled("#retry-task")).toBe(false);
    await shot("06-task-running");

    await page.click("#cancel-task");
    await page.waitForSelector("#task-status[data-status=CANCELLED]");
    expect(await page.isEnabled("#cancel-task")).toBe(false);
    // A cancelled task is dead-lettered: Retry is offered.
    expect(await page.isEnabled("#retry-task")).toBe(true);
    expect(await text("#task-events")).toContain("RUNNING → CANCELLED");
    await shot("07-task-cancelled");
    expect((await api.tasks.getTask({ taskId: id })).status).toBe(TaskStatus.CANCELLED);

    // Retry re-queues it and the page watches the new attempt; cancel it again.
    await page.click("#retry-task");
    await page.waitForSelector("#task-status[data-status=RUNNING]");
    await expect.poll(() => text("#watch-state")).toBe("● live");
    expect(await text("#task-fields")).toContain("Attempt2 of 3");
    await page.click("#cancel-task");
    await page.waitForSelector("#task-status[data-status=CANCELLED]");
    expect(await page.locator("#task-events tr", { hasText: "RUNNING → CANCELLED" }).count()).toBe(2);
    expect((await api.tasks.getTask({ taskId: id })).status).toBe(TaskStatus.CANCELLED);
  });

  it("filters the task list by status and type and pages with page tokens", async () => {
    const noops = await api.tasks.submitTasks({ tasks: Array.from({ length: 25 }, () => ({ type: "noop", queue: "ui-paging" })) });
    const noopIds = new Set(noops.tasks.map((t) => t.id));

    await page.click("nav a[data-route=tasks]");
    await page.waitForSelector("#tasks-table");
    await page.selectOption("#filter-status", "SUCCEEDED");
    await page.fill("#filter-type", "data_processing");
    await page.click("#task-filters button[type=submit]");
    await page.waitForURL(/status=SUCCEEDED/);
    await expect.poll(() => page.locator("#tasks-table a.task-link").count()).toBe(1);
    expect(await text("#tasks-table")).toContain("SUCCEEDED");
    await shot("08-tasks-filtered");

    // 25 tasks in their own queue, 20 per page: two pages, nothing repeated, nothing missed.
    await page.goto(`${base}/ui#/tasks?queue=ui-paging&size=20`);
    await expect.poll(() => page.locator("#tasks-table a.task-link").count()).toBe(20);
    const first = await page.locator("#tasks-table a.task-link").allTextContents();
    expect(await page.isEnabled("#page-newer")).toBe(false);
    await page.click("#page-older");
    await expect.poll(() => text("#page-info")).toContain("page 2");
    await expect.poll(() => page.locator("#tasks-table a.task-link").count()).toBe(5);
    const second = await page.locator("#tasks-table a.task-link").allTextContents();
    expect(new Set([...first, ...second])).toEqual(noopIds);
    await shot("09-tasks-page-2");
    await page.click("#page-newer");
    await expect.poll(() => text("#page-info")).toContain("page 1");
  });

  it("edits a configuration namespace with compare-and-set and rolls it back from the history", async () => {
    const ns = `dashboard-${uniquePrefix("e2e")}`;
    await page.click("nav a[data-route=config]");
    await page.fill("#new-namespace", ns);
    await page.press("#new-namespace", "Enter");
    await expect.poll(() => text("#config-revision")).toContain("new namespace");

    await page.fill("#config-editor", JSON.stringify({ color: "blue", replicas: 2 }));
    await page.click("#config-save");
    await expect.poll(() => text("#config-saved")).toMatch(/^saved as revision \d+$/);
    const firstRevision = (await text("#config-saved")).replace(/\D+/g, "");

    await page.fill("#config-editor", JSON.stringify({ color: "green", replicas: 3 }));
    await page.click("#config-save");
    await expect.poll(() => page.locator("#config-history-table tbody tr").count()).toBe(2);

    // Someone else writes meanwhile: the page's save must not overwrite it.
    const config = createClient(ConfigService, createGrpcTransport({ baseUrl: base, interceptors: [(next) => (req) => {
      req.header.set("authorization", `Bearer ${mesh.apiKey}`);
      return next(req);
    }] }));
    await config.putConfig({ namespace: ns, value: { color: "red" } });
    await page.fill("#config-editor", JSON.stringify({ color: "purple" }));
    await page.click("#config-save");
    await expect.poll(() => text("#error-code")).toBe("FAILED_PRECONDITION");
    expect(await text("#error-what")).toBe("PutConfig");
    expect((await config.getConfig({ namespace: ns })).value).toEqual({ color: "red" });
    await page.click("#config-reload");
    await expect.poll(() => page.inputValue("#config-editor")).toContain("red");

    await page.click(`#config-history-table button.rollback[data-revision="${firstRevision}"]`);
    await expect.poll(() => text("#config-saved")).toContain(`rolled back to revision ${firstRevision}`);
    expect(JSON.parse(await page.inputValue("#config-editor"))).toEqual({ color: "blue", replicas: 2 });
    expect((await config.getConfig({ namespace: ns })).value).toEqual({ color: "blue", replicas: 2 });
    // The success cleared the conflict's error.
    expect(await page.isHidden("#error")).toBe(true);
    await shot("10-config");
  });

  it("charts throughput and latency on the overview from the tasks that finished", async () => {
    await page.click("nav a[data-route=overview]");
    await page.waitForSelector("#card-throughput svg.sparkline");
    // 25 noops, the data task and the cancelled sleep finished within the last minute.
    await expect.poll(() => text("#card-throughput .card-sub"), { timeout: 15_000 }).toMatch(/^(2[7-9]|[3-9]\d|\d{3,}) finished in the last minute$/);
    expect(await text("#card-latency .card-value")).not.toContain("—");
    expect(await page.locator("#card-throughput .spark-line, #card-throughput .spark-dot").count()).toBeGreaterThan(0);
    expect(await text("#queues-table")).toContain("ui-paging");
    await shot("11-overview-after");
  });

  it("loaded nothing from another origin and broke no content security rule", () => {
    const foreign = requests.filter((u) => !u.startsWith(base) && !u.startsWith("data:"));
    expect(foreign).toEqual([]);
    expect(cspViolations).toEqual([]);
    expect(pageErrors).toEqual([]);
  });
});
