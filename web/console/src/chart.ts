// A daily bar chart in SVG (attributes only, so the CSP needs no inline
// style), named for screen readers, with the same numbers in a table.
import { h, table } from "./dom";

const svgNS = "http://www.w3.org/2000/svg";

function svg(tag: string, attrs: Record<string, string | number>, text?: string): SVGElement {
  const el = document.createElementNS(svgNS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

export interface Series {
  label: string;
  days: string[];
  values: number[];
  format(v: number): string;
}

export function barChart(s: Series): HTMLElement {
  const width = 800;
  const height = 240;
  const pad = { top: 16, right: 12, bottom: 28, left: 64 };
  const max = Math.max(1, ...s.values);
  const innerW = width - pad.left - pad.right;
  const innerH = height - pad.top - pad.bottom;
  const step = innerW / Math.max(1, s.values.length);
  const total = s.values.reduce((a, b) => a + b, 0);
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": `${s.label} per day, ${s.days[0] ?? ""} to ${s.days[s.days.length - 1] ?? ""}: total ${s.format(total)}, highest ${s.format(max)}` });
  root.append(
    svg("line", { x1: pad.left, y1: pad.top + innerH, x2: width - pad.right, y2: pad.top + innerH, class: "axis" }),
    svg("text", { x: pad.left - 6, y: pad.top + 4, "text-anchor": "end" }, s.format(max)),
    svg("text", { x: pad.left - 6, y: pad.top + innerH, "text-anchor": "end" }, "0"),
  );
  s.values.forEach((v, i) => {
    const barH = (v / max) * innerH;
    const bar = svg("rect", { x: pad.left + i * step + step * 0.15, y: pad.top + innerH - barH, width: Math.max(1, step * 0.7), height: barH, class: "bar" });
    bar.append(svg("title", {}, `${s.days[i]}: ${s.format(v)}`));
    root.append(bar);
  });
  // Label about eight days along the axis, so the text never overlaps.
  const every = Math.max(1, Math.ceil(s.days.length / 8));
  s.days.forEach((d, i) => {
    if (i % every === 0) root.append(svg("text", { x: pad.left + i * step + step / 2, y: height - 8, "text-anchor": "middle" }, d.slice(5)));
  });
  const rows = s.days.map((d, i) => [d, s.format(s.values[i])]);
  return h("figure", {}, root as unknown as HTMLElement,
    h("details", {}, h("summary", {}, `${s.label} per day as a table`), table(`${s.label} per day`, ["Day", s.label], rows, [1])));
}
