/** Attribute values {@link h} accepts; `false`, `null` and `undefined` leave the attribute out. */
export type AttrValue = string | number | boolean | null | undefined;

/** Attributes of {@link h}: values by name, plus `on` for event listeners. */
export type Attrs = { on?: Handlers } & { [name: string]: AttrValue | Handlers };

/** A child {@link h} accepts: nodes, text, or nothing. Arrays are flattened. */
export type Child = Node | string | number | null | undefined | false | Child[];

/** Event handlers by event name, e.g. `{ click: () => ... }`. */
export type Handlers = Partial<{ [K in keyof HTMLElementEventMap]: (ev: HTMLElementEventMap[K]) => void }>;

/**
 * Creates an HTML element: `h("a", { href: "#/tasks", class: "nav" }, "Tasks")`. Attributes with
 * `true` are set empty (`disabled`), `false`/`null`/`undefined` are skipped; `on` adds listeners.
 * Text children become text nodes, never HTML, so server data cannot inject markup.
 */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "on") continue;
    setAttr(el, name, value as AttrValue);
  }
  const on = attrs.on;
  if (on !== undefined) {
    for (const [type, fn] of Object.entries(on)) el.addEventListener(type, fn as EventListener);
  }
  append(el, children);
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** Creates an SVG element with attributes (see {@link h}). */
export function s<K extends keyof SVGElementTagNameMap>(
  tag: K,
  attrs: Record<string, AttrValue> = {},
  ...children: Child[]
): SVGElementTagNameMap[K] {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) setAttr(el, name, value);
  append(el, children);
  return el;
}

function setAttr(el: Element, name: string, value: AttrValue): void {
  if (value === false || value === null || value === undefined) return;
  el.setAttribute(name, value === true ? "" : String(value));
}

function append(el: Element, children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(typeof c === "number" ? String(c) : c);
  }
}

/** Replaces all children of `el`. */
export function replace(el: Element, ...children: Child[]): void {
  el.replaceChildren();
  append(el, children);
}

/** The element with this id, or an error naming it (the page's skeleton is fixed). */
export function byId<T extends HTMLElement = HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (el === null) throw new Error(`#${id} is missing from the page`);
  return el as T;
}
