/**
 * A one-line progress bar. On a terminal it redraws one line in place (`\r`, clear to end of line)
 * and keeps other lines printed through {@link ProgressBar.log} above it; anywhere else (a pipe, a
 * file, CI logs) it prints one line per change, so logs show every step without control codes.
 */
import { paint, truncate, type OutputStream } from "./output.js";

/** Options of {@link ProgressBar}. */
export interface ProgressBarOptions {
  /** Redraw in place. @default stream.isTTY */
  tty?: boolean;
  /** Colour the bar. @default false */
  color?: boolean;
  /** Cells of the bar itself. @default 30 */
  width?: number;
}

/** `[#########---------------------]  30% message` for `percent` (clamped to 0–100). */
export function renderBar(percent: number, width: number, message = ""): string {
  const p = Math.max(0, Math.min(100, Math.round(percent)));
  const filled = Math.round((p / 100) * width);
  return `[${"#".repeat(filled)}${"-".repeat(width - filled)}] ${String(p).padStart(3)}%${message !== "" ? `  ${message}` : ""}`;
}

/** A progress bar on one stream; call {@link finish} before printing anything else there. */
export class ProgressBar {
  private readonly tty: boolean;
  private readonly color: boolean;
  private readonly width: number;
  private percent: number | undefined;
  private message = "";
  /** True while the bar occupies the current (unterminated) terminal line. */
  private drawn = false;

  constructor(
    private readonly stream: OutputStream,
    opts: ProgressBarOptions = {},
  ) {
    this.tty = opts.tty ?? stream.isTTY === true;
    this.color = opts.color ?? false;
    this.width = opts.width ?? 30;
  }

  /** Shows `percent` (0–100) and a message; a repeat of the shown state prints nothing. */
  update(percent: number, message = ""): void {
    const p = Math.max(0, Math.min(100, Math.round(percent)));
    if (p === this.percent && message === this.message) return;
    this.percent = p;
    this.message = message;
    if (this.tty) this.redraw();
    else this.stream.write(`${renderBar(p, this.width, message)}\n`);
  }

  /** Prints a line of its own; on a terminal the bar is drawn again below it. */
  log(line: string): void {
    if (this.tty && this.drawn) {
      this.stream.write(`\r\x1b[K${line}\n`);
      this.drawn = false;
      this.redraw();
    } else {
      this.stream.write(`${line}\n`);
    }
  }

  /** Ends the bar's line on a terminal (the bar stays visible); nothing to do elsewhere. */
  finish(): void {
    if (this.tty && this.drawn) this.stream.write("\n");
    this.drawn = false;
  }

  private redraw(): void {
    if (this.percent === undefined) return;
    // Never wider than the terminal: a wrapped line cannot be redrawn with \r.
    const columns = this.stream.columns !== undefined && this.stream.columns > 0 ? this.stream.columns : 80;
    const text = truncate(renderBar(this.percent, this.width, this.message), Math.max(10, columns - 1));
    const bar = text.slice(0, this.width + 2);
    const shown = paint(this.color, this.percent >= 100 ? "green" : "cyan", bar) + text.slice(this.width + 2);
    this.stream.write(`\r${shown}\x1b[K`);
    this.drawn = true;
  }
}
