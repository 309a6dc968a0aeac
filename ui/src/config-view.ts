import type { JsonObject } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { ConfigEntry } from "../../gen/taskmesh/v1/config_service_pb.js";
import { api, isAbort } from "./api.js";
import { h, replace } from "./dom.js";
import { clock, json } from "./format.js";
import { table } from "./overview.js";
import type { View, ViewContext } from "./view.js";

/** The configuration namespaces: their current documents, and a form to start a new one. */
export function configListView(ctx: ViewContext): View {
  const body = h("div", { id: "config-list" }, h("p", { class: "muted" }, "loading…"));
  const name = h("input", { id: "new-namespace", placeholder: "namespace, e.g. worker/w1", required: true });
  const el = h(
    "div",
    { class: "view config" },
    h("div", { class: "view-head" }, h("h1", {}, "Configuration")),
    h(
      "form",
      {
        class: "filters",
        on: {
          submit: (ev) => {
            ev.preventDefault();
            const ns = name.value.trim();
            if (ns !== "") ctx.navigate(configRoute(ns));
          },
        },
      },
      h("label", {}, "Open or create ", name),
      h("button", { type: "submit", class: "primary" }, "Open"),
    ),
    body,
  );
  api.config.listConfigs({}, { signal: ctx.signal, timeoutMs: 10_000 }).then(
    (res) =>
      replace(
        body,
        table(
          ["Namespace", "Revision", "Updated", "Author", "Keys"],
          res.entries.map((e) => [
            h(
              "span",
              {},
              h("a", { href: configRoute(e.namespace), class: "config-link" }, h("code", {}, e.namespace)),
              Object.keys(e.grayLabels).length > 0 ? h("span", { class: "badge warn" }, "gray") : null,
            ),
            e.revision.toString(),
            clock(e.updatedAt),
            e.author,
            Object.keys(e.value ?? {}).join(", "),
          ]),
          "No configuration stored yet.",
          "config-table",
        ),
      ),
    (err: unknown) => {
      if (!isAbort(err, ctx.signal)) ctx.reportError("ListConfigs", err);
    },
  );
  return { el, dispose() {} };
}

/** The route of a namespace's page. */
export function configRoute(ns: string): string {
  return `#/config/${encodeURIComponent(ns)}`;
}

/**
 * One namespace: its document in an editor, saved with `expected_revision` (a concurrent change
 * fails the save instead of being overwritten), and its history with a rollback per version.
 */
export function configEditView(ctx: ViewContext, namespace: string): View {
  const editor = h("textarea", { id: "config-editor", rows: 16, spellcheck: false });
  const revision = h("span", { id: "config-revision", class: "muted" });
  const save = h("button", { id: "config-save", class: "primary", disabled: true }, "Save");
  const reload = h("button", { id: "config-reload" }, "Reload");
  const saved = h("span", { id: "config-saved", class: "muted" });
  const history = h("div", { id: "config-history" }, h("p", { class: "muted" }, "loading…"));
  const preview = h("pre", { class: "json", id: "config-preview", hidden: true });
  // The revision the editor's text is based on; 0 for a namespace with no document yet.
  let base = 0n;
  let current: ConfigEntry | undefined;

  const el = h(
    "div",
    { class: "view config-edit" },
    h("div", { class: "view-head" }, h("h1", {}, "Configuration ", h("code", { id: "config-namespace" }, namespace)), revision),
    h(
      "section",
      { class: "panel" },
      h("p", { class: "muted" }, h("a", { href: "#/config" }, "← all namespaces")),
      editor,
      h("div", { class: "actions" }, save, reload, saved),
    ),
    h("section", { class: "panel" }, h("h2", {}, "History"), history, preview),
  );

  const load = async (): Promise<void> => {
    saved.textContent = "";
    try {
      const e = await api.config.getConfig({ namespace }, { signal: ctx.signal, timeoutMs: 10_000 });
      current = e;
      base = e.revision;
      editor.value = json(e.value ?? {});
      revision.textContent = `revision ${e.revision} · ${clock(e.updatedAt)} · ${e.author}`;
    } catch (err) {
      if (isAbort(err, ctx.signal)) return;
      if (err instanceof ConnectError && err.code === Code.NotFound) {
        current = undefined;
        base = 0n;
        editor.value = "{}";
        revision.textContent = "new namespace: no document yet";
      } else {
        ctx.reportError("GetConfig", err);
        return;
      }
    }
    save.disabled = false;
    await loadHistory();
  };

  const loadHistory = async (): Promise<void> => {
    try {
      const res = await api.config.getConfigHistory({ namespace }, { signal: ctx.signal, timeoutMs: 10_000 });
      replace(
        history,
        table(
          ["Revision", "Updated", "Author", "Document", ""],
          res.entries.map((e) => [
            e.revision.toString(),
            clock(e.updatedAt),
            e.author,
            h(
              "button",
              { class: "link", on: { click: () => showPreview(e) } },
              e.value === undefined ? "(deleted)" : plural(Object.keys(e.value).length, "key"),
            ),
            e.revision === current?.revision || e.value === undefined
              ? e.revision === current?.revision
                ? h("span", { class: "badge leader" }, "current")
                : ""
              : h(
                  "button",
                  { class: "rollback", "data-revision": e.revision.toString(), on: { click: () => void rollback(e.revision) } },
                  "Roll back to this",
                ),
          ]),
          "No history yet.",
          "config-history-table",
        ),
      );
    } catch (err) {
      if (!isAbort(err, ctx.signal)) ctx.reportError("GetConfigHistory", err);
    }
  };

  const showPreview = (e: ConfigEntry): void => {
    preview.hidden = false;
    preview.textContent = `revision ${e.revision}\n${json(e.value ?? null)}`;
  };

  const rollback = async (to: bigint): Promise<void> => {
    try {
      const e = await api.config.rollbackConfig({ namespace, toRevision: to }, { signal: ctx.signal, timeoutMs: 10_000 });
      ctx.clearError();
      await load();
      saved.textContent = `rolled back to revision ${to}: now revision ${e.revision}`;
    } catch (err) {
      if (!isAbort(err, ctx.signal)) ctx.reportError("RollbackConfig", err);
    }
  };

  save.addEventListener("click", () => {
    void (async () => {
      let value: JsonObject;
      try {
        const v: unknown = JSON.parse(editor.value);
        if (typeof v !== "object" || v === null || Array.isArray(v)) throw new Error("must be a JSON object");
        value = v as JsonObject;
      } catch (err) {
        ctx.reportError("PutConfig", new ConnectError(`value: ${(err as Error).message}`, Code.InvalidArgument));
        return;
      }
      save.disabled = true;
      try {
        const e = await api.config.putConfig(
          { namespace, value, expectedRevision: base },
          { signal: ctx.signal, timeoutMs: 10_000 },
        );
        ctx.clearError();
        await load();
        saved.textContent = `saved as revision ${e.revision}`;
      } catch (err) {
        if (isAbort(err, ctx.signal)) return;
        ctx.reportError("PutConfig", err);
        if (err instanceof ConnectError && (err.code === Code.FailedPrecondition || err.code === Code.Aborted)) {
          saved.textContent = "changed meanwhile by someone else: Reload to see it (your text stays until you do)";
        }
      } finally {
        save.disabled = false;
      }
    })();
  });
  reload.addEventListener("click", () => void load());
  void load();
  return { el, dispose() {} };
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}
