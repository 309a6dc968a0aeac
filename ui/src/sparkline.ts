import { s } from "./dom.js";

/** Options for {@link sparkline}. */
export interface SparklineOptions {
  /** @default 240 */
  width?: number;
  /** @default 48 */
  height?: number;
  /** Top of the scale; the data's maximum (at least `minMax`) when unset. */
  max?: number;
  /** Smallest top of the scale, so a flat low line does not fill the chart. @default 1 */
  minMax?: number;
  /** Accessible description (also the tooltip). */
  label: string;
  /** Fill the area under the line. @default true */
  area?: boolean;
}

/**
 * A small SVG line chart of evenly spaced values, oldest first. `null` values leave gaps; a
 * point with no neighbour is drawn as a dot. Scales from 0 to the max; no axes, by design.
 */
export function sparkline(values: readonly (number | null)[], opts: SparklineOptions): SVGSVGElement {
  const width = opts.width ?? 240;
  const height = opts.height ?? 48;
  const pad = 3;
  const data = values.filter((v): v is number => v !== null);
  const max = opts.max ?? Math.max(opts.minMax ?? 1, ...data);
  const n = values.length;
  const x = (i: number): number => pad + (n <= 1 ? 0 : (i * (width - 2 * pad)) / (n - 1));
  const y = (v: number): number => height - pad - (Math.min(v, max) / max) * (height - 2 * pad);
  const svg = s("svg", {
    class: "sparkline",
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    role: "img",
    "aria-label": opts.label,
  });
  svg.append(s("title", {}, opts.label));
  svg.append(s("line", { class: "spark-base", x1: pad, x2: width - pad, y1: height - pad, y2: height - pad }));
  // Runs of consecutive non-null values.
  const runs: [number, number][][] = [];
  let run: [number, number][] = [];
  values.forEach((v, i) => {
    if (v === null) {
      if (run.length > 0) runs.push(run);
      run = [];
    } else {
      run.push([x(i), y(v)]);
    }
  });
  if (run.length > 0) runs.push(run);
  const fmt = (p: [number, number]): string => `${p[0].toFixed(1)},${p[1].toFixed(1)}`;
  for (const r of runs) {
    const first = r[0];
    const last = r[r.length - 1];
    if (first === undefined || last === undefined) continue;
    if (r.length === 1) {
      svg.append(s("circle", { class: "spark-dot", cx: first[0].toFixed(1), cy: first[1].toFixed(1), r: 1.8 }));
      continue;
    }
    const line = r.map(fmt).join(" ");
    if (opts.area !== false) {
      const base = (height - pad).toFixed(1);
      svg.append(
        s("polygon", {
          class: "spark-area",
          points: `${first[0].toFixed(1)},${base} ${line} ${last[0].toFixed(1)},${base}`,
        }),
      );
    }
    svg.append(s("polyline", { class: "spark-line", points: line }));
  }
  // The newest value is marked.
  const lastRun = runs.at(-1)?.at(-1);
  if (lastRun !== undefined && values.at(-1) !== null) {
    svg.append(s("circle", { class: "spark-now", cx: lastRun[0].toFixed(1), cy: lastRun[1].toFixed(1), r: 2.5 }));
  }
  return svg;
}
