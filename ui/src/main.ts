import { api, apiKey, describeError, isUnauthenticated } from "./api.js";
import { byId, h, replace } from "./dom.js";
import { configEditView, configListView } from "./config-view.js";
import { Monitor } from "./monitor.js";
import { overviewView } from "./overview.js";
import { submitView } from "./submit-form.js";
import { taskDetailView } from "./task-detail.js";
import { parseFilters, taskListView } from "./task-list.js";
import type { View, ViewContext } from "./view.js";

// The dashboard shell: sign-in with an API key, the navigation, the error banner and a
// hash router (`#/overview`, `#/tasks?status=...`, `#/tasks/<id>`, `#/submit`, `#/config/<ns>`).

const main = byId("view");
const nav = byId("nav");
const session = byId("session");
const banner = byId("error");
const monitor = new Monitor();
let current: { view: View; abort: AbortController } | undefined;

function showError(what: string, err: unknown): void {
  const e = describeError(err);
  banner.hidden = false;
  replace(
    banner,
    h("strong", { class: "err-code", id: "error-code" }, e.code),
    " ",
    h("span", { id: "error-what" }, what),
    ": ",
    h("span", { id: "error-message" }, e.message),
    e.details.length > 0 ? h("ul", { class: "err-details" }, e.details.map((d) => h("li", {}, d))) : null,
    h("button", { class: "dismiss", title: "Dismiss", "aria-label": "Dismiss", on: { click: clearError } }, "×"),
  );
  if (isUnauthenticated(err) && apiKey.get() !== undefined) signOut(false);
}

function clearError(): void {
  banner.hidden = true;
  banner.replaceChildren();
}

function unmount(): void {
  if (current === undefined) return;
  current.abort.abort();
  current.view.dispose();
  current = undefined;
}

function mount(make: (ctx: ViewContext) => View): void {
  unmount();
  const abort = new AbortController();
  const ctx: ViewContext = {
    monitor,
    reportError: showError,
    clearError,
    navigate(hash) {
      if (location.hash === hash) route();
      else location.hash = hash;
    },
    signal: abort.signal,
  };
  const view = make(ctx);
  current = { view, abort };
  replace(main, view.el);
}

function route(): void {
  if (apiKey.get() === undefined) {
    showLogin();
    return;
  }
  const hash = location.hash.replace(/^#\/?/, "");
  const [path = "", query = ""] = hash.split("?", 2);
  const parts = path.split("/").filter((p) => p !== "");
  const section = parts[0] ?? "overview";
  for (const a of nav.querySelectorAll<HTMLAnchorElement>("a[data-route]")) {
    a.classList.toggle("active", a.dataset.route === section);
  }
  const rest = parts.slice(1).map(decodeURIComponent).join("/");
  switch (section) {
    case "overview":
      mount((ctx) => overviewView(ctx));
      break;
    case "tasks":
      if (rest === "") mount((ctx) => taskListView(ctx, parseFilters(new URLSearchParams(query))));
      else mount((ctx) => taskDetailView(ctx, rest));
      break;
    case "submit":
      mount((ctx) => submitView(ctx));
      break;
    case "config":
      if (rest === "") mount((ctx) => configListView(ctx));
      else mount((ctx) => configEditView(ctx, rest));
      break;
    default:
      mount(() => ({
        el: h("div", { class: "view" }, h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/overview" }, "Back to the overview"))),
        dispose() {},
      }));
  }
}

function showLogin(): void {
  unmount();
  nav.hidden = true;
  session.hidden = true;
  const input = h("input", {
    id: "api-key",
    type: "password",
    autocomplete: "off",
    required: true,
    placeholder: "tm_…",
    "aria-label": "API key",
  });
  const button = h("button", { id: "sign-in", type: "submit", class: "primary" }, "Sign in");
  const form = h(
    "form",
    {
      id: "login-form",
      class: "panel login",
      on: {
        submit: (ev) => {
          ev.preventDefault();
          const key = input.value.trim();
          if (key === "") return;
          button.disabled = true;
          apiKey.set(key);
          // Any call that needs a key checks it; ListTasks needs only tasks:read.
          api.tasks.listTasks({ pageSize: 1 }, { timeoutMs: 10_000 }).then(
            () => {
              clearError();
              signedIn();
            },
            (err: unknown) => {
              apiKey.clear();
              button.disabled = false;
              showError("Sign in", err);
            },
          );
        },
      },
    },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Enter an API key of this gateway. It is kept in this tab only (sessionStorage) and sent as Authorization: Bearer."),
    h("label", {}, h("span", {}, "API key"), input),
    h("div", { class: "actions" }, button),
  );
  replace(main, form);
  input.focus();
}

function signedIn(): void {
  const key = apiKey.get() ?? "";
  nav.hidden = false;
  session.hidden = false;
  byId("session-key").textContent = key.length > 10 ? `${key.slice(0, 6)}…${key.slice(-4)}` : "key set";
  monitor.start();
  route();
}

function signOut(clear = true): void {
  apiKey.clear();
  monitor.stop();
  if (clear) clearError();
  showLogin();
}

byId("sign-out").addEventListener("click", () => signOut());
window.addEventListener("hashchange", () => {
  if (apiKey.get() !== undefined) route();
});
if (apiKey.get() !== undefined) signedIn();
else showLogin();
