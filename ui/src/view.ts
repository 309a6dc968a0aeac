import type { Monitor } from "./monitor.js";

/** A mounted page of the dashboard. */
export interface View {
  /** The page's root element (the shell puts it into `<main>`). */
  readonly el: HTMLElement;
  /** Stops the page's timers and streams; called when the user leaves it. */
  dispose(): void;
}

/** What every page gets from the shell. */
export interface ViewContext {
  /** The background poller behind the overview charts. */
  readonly monitor: Monitor;
  /** Shows a failed call to the user: `what` names it (e.g. "CancelTask"). */
  reportError(what: string, err: unknown): void;
  /** Clears the error banner (after a successful action). */
  clearError(): void;
  /** Goes to a route, e.g. `#/tasks/01J...`. */
  navigate(hash: string): void;
  /** Aborted when the page is disposed: pass it to every call the page makes. */
  readonly signal: AbortSignal;
}
