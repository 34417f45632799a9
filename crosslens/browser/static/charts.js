// Small SVG charts for the feature page: lines with markers, bars and heatmaps on linear or log axes,
// panels side by side, a second y axis on the right, and a dotted line at the chosen reading. Each
// point, bar and cell carries its value for the page's tooltip. A figure is a few hundred SVG
// elements drawn in milliseconds, with no charting library to fetch, parse and start in a new tab.
//
// A figure:  { panels: [panel, ...] }
// a panel:   { domain: [0, 1] (share of the width), x: axis, y: axis, y2: axis (optional), series: [...], note }
// an axis:   { title, type: "linear" | "log", range: [lo, hi] (else the data's), zero (start at 0),
//              ticks: [[value, label], ...] (else chosen), format: value -> label }
// a series:  { name, type: "line" | "bar" | "heatmap", axis: "y" | "y2", x, y, z (heatmap rows: z[i][j] at
//              y[i], x[j]), color, dash, markers, symbol, size, widths (bars, in x units), tip: i -> text }
// The drawn series are kept as `holder.data` ([{type, name, x, y, z}]), what the tests read.
"use strict";

const Charts = { NS: "http://www.w3.org/2000/svg", MARGIN: { l: 62, r: 16, t: 8, b: 40 }, GRID: "#e9edf1" };

Charts.node = function (tag, attrs = {}, ...children) {
  const node = document.createElementNS(Charts.NS, tag);
  for (const [key, value] of Object.entries(attrs)) if (value !== null && value !== undefined) node.setAttribute(key, value);
  for (const child of children) if (child) node.append(child);
  return node;
};

Charts.text = function (x, y, text, attrs = {}) {
  const node = Charts.node("text", Object.assign({ x, y, "font-size": 11, fill: "#3c4652" }, attrs));
  node.textContent = text;
  return node;
};

// Round tick values between lo and hi (about n of them).
Charts.niceTicks = function (lo, hi, n = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / n;
  const power = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((k) => k * power).find((s) => s >= raw) || 10 * power;
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
};

Charts.logTicks = function (lo, hi) {
  const ticks = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
    for (const k of hi / lo < 100 ? [1, 2, 5] : [1]) {
      const v = k * Math.pow(10, e);
      if (v >= lo * 0.999 && v <= hi * 1.001) ticks.push(v);
    }
  }
  return ticks;
};

// The [lo, hi] an axis spans: its own range, else the values' (padded; from 0 with `zero`).
Charts.extent = function (axis, values) {
  if (axis.range) return axis.range;
  const finite = values.filter((v) => v !== null && v !== undefined && Number.isFinite(v) && (axis.type !== "log" || v > 0));
  if (!finite.length) return axis.type === "log" ? [0.1, 1] : [0, 1];
  let lo = Math.min(...finite);
  let hi = Math.max(...finite);
  if (axis.type === "log") return lo === hi ? [lo / 2, hi * 2] : [lo / Math.pow(hi / lo, 0.06), hi * Math.pow(hi / lo, 0.06)];
  if (axis.zero) lo = Math.min(0, lo);
  if (lo === hi) return [lo - 1, hi + 1];
  const pad = (hi - lo) * 0.06;
  return [axis.zero && lo === 0 ? 0 : lo - pad, hi + pad];
};

Charts.scale = function (axis, [lo, hi], [a, b]) {
  if (axis.type === "log") {
    const [l, h] = [Math.log10(lo), Math.log10(hi)];
    return (v) => (v > 0 ? a + ((Math.log10(v) - l) / (h - l)) * (b - a) : null);
  }
  return (v) => (v === null || v === undefined ? null : a + ((v - lo) / (hi - lo)) * (b - a));
};

Charts.VIRIDIS = [[68, 1, 84], [72, 40, 120], [62, 73, 137], [49, 104, 142], [38, 130, 142], [31, 158, 137],
  [53, 183, 121], [110, 206, 88], [181, 222, 43], [253, 231, 37]];

Charts.viridis = function (t) {
  const f = Math.max(0, Math.min(1, t)) * (Charts.VIRIDIS.length - 1);
  const i = Math.min(Charts.VIRIDIS.length - 2, Math.floor(f));
  const [a, b] = [Charts.VIRIDIS[i], Charts.VIRIDIS[i + 1]];
  return `rgb(${a.map((c, k) => Math.round(c + (b[k] - c) * (f - i))).join(",")})`;
};

Charts.symbol = function (symbol, x, y, size, color) {
  const r = size / 2;
  const paths = {
    "triangle-up": `M${x},${y - r}L${x + r},${y + r * 0.8}L${x - r},${y + r * 0.8}Z`,
    "triangle-down": `M${x},${y + r}L${x + r},${y - r * 0.8}L${x - r},${y - r * 0.8}Z`,
    "triangle-up-open": `M${x},${y - r}L${x + r},${y + r * 0.8}L${x - r},${y + r * 0.8}Z`,
    x: `M${x - r},${y - r}L${x + r},${y + r}M${x + r},${y - r}L${x - r},${y + r}`,
    star: Array.from({ length: 10 }, (_, k) => {
      const angle = -Math.PI / 2 + (k * Math.PI) / 5;
      const radius = k % 2 ? r * 0.45 : r;
      return `${k ? "L" : "M"}${(x + radius * Math.cos(angle)).toFixed(1)},${(y + radius * Math.sin(angle)).toFixed(1)}`;
    }).join("") + "Z",
  };
  const open = symbol === "x" || symbol.endsWith("-open");
  return Charts.node("path", { d: paths[symbol] || paths["triangle-up"], fill: open ? "none" : color, stroke: color,
    "stroke-width": open ? 2 : 1 });
};

// One axis's ticks, grid lines and title. `side`: "left", "right" or "bottom".
Charts.axis = function (g, axis, span, scale, box, side) {
  const ticks = axis.ticks || (axis.type === "log" ? Charts.logTicks(...span) : Charts.niceTicks(...span)).map((v) => [v, null]);
  const format = axis.format || ((v) => CL.fmt(v, 3));
  for (const [value, label] of ticks) {
    const at = scale(value);
    if (at === null || !Number.isFinite(at)) continue;
    const text = label !== null && label !== undefined ? label : format(value);
    if (side === "bottom") {
      g.append(Charts.text(at, box.y1 + 15, text, { "text-anchor": "middle" }));
    } else {
      if (side === "left") g.append(Charts.node("line", { x1: box.x0, x2: box.x1, y1: at, y2: at, stroke: Charts.GRID }));
      const x = side === "left" ? box.x0 - 6 : box.x1 + 6;
      g.append(Charts.text(x, at + 4, text, { "text-anchor": side === "left" ? "end" : "start" }));
    }
  }
  if (!axis.title) return;
  if (side === "bottom") g.append(Charts.text((box.x0 + box.x1) / 2, box.y1 + 32, axis.title, { "text-anchor": "middle" }));
  else {
    const x = side === "left" ? box.x0 - 50 : box.x1 + 40;
    const y = (box.y0 + box.y1) / 2;
    g.append(Charts.text(x, y, axis.title, { "text-anchor": "middle", transform: `rotate(-90 ${x} ${y})` }));
  }
};

Charts.line = function (g, s, sx, sy) {
  const color = s.color || "#1f77b4";
  let run = [];
  const flush = () => {
    if (run.length > 1) g.append(Charts.node("polyline", { points: run.join(" "), fill: "none", stroke: color,
      "stroke-width": 2, "stroke-dasharray": s.dash ? "5 4" : null }));
    run = [];
  };
  s.x.forEach((x, i) => {
    const [px, py] = [sx(x), s.y[i] === null ? null : sy(s.y[i])];
    if (px === null || py === null || !Number.isFinite(py)) { flush(); return; }
    run.push(`${px.toFixed(1)},${py.toFixed(1)}`);
  });
  flush();
  s.x.forEach((x, i) => {
    const [px, py] = [sx(x), s.y[i] === null ? null : sy(s.y[i])];
    if (px === null || py === null || !Number.isFinite(py)) return;
    const tip = s.tip ? s.tip(i) : `${s.name}: ${CL.fmt(s.y[i], 4)}`;
    if (s.symbol) {
      const mark = Charts.symbol(s.symbol, px, py, s.size || 11, s.color || "#111");
      mark.setAttribute("data-tip", tip);
      g.append(mark);
    } else {
      g.append(Charts.node("circle", { cx: px, cy: py, r: s.markers ? 3.5 : 6, fill: s.markers ? color : "transparent",
        "data-tip": tip }));
    }
  });
};

Charts.bars = function (g, s, sx, sy, box, slot) {
  const base = sy.base;
  s.x.forEach((x, i) => {
    const value = s.y[i];
    const top = value === null || value === undefined ? null : sy(value);
    if (top === null || !Number.isFinite(top)) return;
    const width = s.widths ? Math.abs(sx(x + s.widths[i] / 2) - sx(x - s.widths[i] / 2)) * 0.95 : slot.width;
    const left = sx(x) - (s.widths ? width / 2 : slot.offset);
    const [y0, y1] = [Math.min(top, base), Math.max(top, base)];
    g.append(Charts.node("rect", { x: left, y: y0, width: Math.max(1, width), height: Math.max(0.5, y1 - y0),
      fill: s.color || "#ff9d3c", "fill-opacity": s.opacity || 1, "data-tip": s.tip ? s.tip(i) : `${s.name}: ${CL.fmt(value, 4)}` }));
  });
};

Charts.heatmap = function (g, s, sx, sy, box) {
  const values = s.z.flat().filter((v) => v !== null && Number.isFinite(v));
  const [lo, hi] = values.length ? [Math.min(...values), Math.max(...values)] : [0, 1];
  const edges = (centers, scale, i) => {
    const before = i > 0 ? (centers[i - 1] + centers[i]) / 2 : centers[i] - (centers[i + 1] - centers[i]) / 2 || centers[i] - 0.5;
    const after = i + 1 < centers.length ? (centers[i] + centers[i + 1]) / 2 : centers[i] + (centers[i] - centers[i - 1]) / 2 || centers[i] + 0.5;
    return [scale(before), scale(after)];
  };
  s.z.forEach((row, i) => {
    if (!row) return;
    const [ya, yb] = edges(s.y, sy, i);
    row.forEach((value, j) => {
      if (value === null || !Number.isFinite(value)) return;
      const [xa, xb] = edges(s.x, sx, j);
      g.append(Charts.node("rect", { x: Math.min(xa, xb), y: Math.min(ya, yb), width: Math.abs(xb - xa) + 0.3,
        height: Math.abs(yb - ya) + 0.3, fill: Charts.viridis((value - lo) / (hi - lo || 1)), "data-tip": s.tip ? s.tip(i, j) : CL.fmt(value) }));
    });
  });
  const bar = { x: box.x1 + 12, y0: box.y0, y1: box.y1, width: 10 };
  const steps = 24;
  for (let k = 0; k < steps; k++) {
    const y = bar.y1 - ((k + 1) / steps) * (bar.y1 - bar.y0);
    g.append(Charts.node("rect", { x: bar.x, y, width: bar.width, height: (bar.y1 - bar.y0) / steps + 0.5, fill: Charts.viridis((k + 0.5) / steps) }));
  }
  const scale = (v) => bar.y1 - ((v - lo) / (hi - lo || 1)) * (bar.y1 - bar.y0);
  for (const v of Charts.niceTicks(lo, hi, 4)) g.append(Charts.text(bar.x + bar.width + 4, scale(v) + 4, CL.fmt(v, 2)));
  if (s.colorTitle) {
    const [x, y] = [bar.x + bar.width + 34, (bar.y0 + bar.y1) / 2];
    g.append(Charts.text(x, y, s.colorTitle, { "text-anchor": "middle", transform: `rotate(90 ${x} ${y})` }));
  }
};

Charts.panel = function (svg, panel, box) {
  const g = Charts.node("g", { class: "panel" });
  svg.append(g);
  const xs = panel.series.flatMap((s) => s.x);
  const sx = Charts.scale(panel.x, Charts.extent(panel.x, xs), [box.x0, box.x1]);
  const scales = {};
  for (const name of ["y", "y2"]) {
    const axis = panel[name];
    if (!axis) continue;
    const own = panel.series.filter((s) => (s.axis || "y") === name);
    const span = Charts.extent(axis, own.flatMap((s) => (s.type === "heatmap" ? s.y : s.y)));
    scales[name] = Charts.scale(axis, span, [box.y1, box.y0]);
    scales[name].base = axis.type === "log" ? box.y1 : Math.max(box.y0, Math.min(box.y1, scales[name](0)));
    Charts.axis(g, axis, span, scales[name], box, name === "y" ? "left" : "right");
  }
  Charts.axis(g, panel.x, Charts.extent(panel.x, xs), sx, box, "bottom");
  g.append(Charts.node("rect", { x: box.x0, y: box.y0, width: box.x1 - box.x0, height: box.y1 - box.y0, fill: "none", stroke: "#c9d1da" }));
  const bars = panel.series.filter((s) => s.type === "bar" && !s.widths);
  const spacing = bars.length ? Math.abs(sx(1) - sx(0)) * 0.8 : 0;
  panel.series.forEach((s) => {
    const sy = scales[s.axis || "y"];
    if (s.type === "heatmap") Charts.heatmap(g, s, sx, sy, box);
    else if (s.type === "bar") {
      const k = bars.indexOf(s);
      const width = spacing / Math.max(1, bars.length);
      Charts.bars(g, s, sx, sy, box, { width, offset: spacing / 2 - k * width });
    } else Charts.line(g, s, sx, sy);
  });
  if (panel.note) g.append(Charts.text((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2, panel.note, { "text-anchor": "middle", "font-size": 13, fill: "#5f6b7a" }));
  const reading = Charts.node("line", { class: "reading", y1: box.y0, y2: box.y1, stroke: "#d62728", "stroke-width": 1.5,
    "stroke-dasharray": "2 3", visibility: "hidden" });
  reading.sx = sx;
  g.append(reading);
};

// Draw `figure` into `holder` (replacing what it held), with the reading line at `reading` (null: none).
Charts.plot = function (holder, figure, reading = null) {
  const width = holder.clientWidth || 600;
  const height = holder.clientHeight || 270;
  const m = Object.assign({}, Charts.MARGIN, figure.margin || {});
  const svg = Charts.node("svg", { class: "chart", width, height, viewBox: `0 0 ${width} ${height}` });
  const inner = width - m.l - m.r;
  for (const panel of figure.panels) {
    const [a, b] = panel.domain || [0, 1];
    Charts.panel(svg, panel, { x0: m.l + a * inner, x1: m.l + b * inner, y0: m.t, y1: height - m.b });
  }
  holder.replaceChildren(svg);
  holder.data = figure.panels.flatMap((p) => p.series).map((s) => ({ type: s.type === "line" ? undefined : s.type, name: s.name, x: s.x, y: s.y, z: s.z }));
  Charts.setReading(holder, reading);
};

// Move the dotted reading line of every panel of `holder` to x = `reading` (null: hide it).
Charts.setReading = function (holder, reading) {
  holder.querySelectorAll("line.reading").forEach((line) => {
    const x = reading === null ? null : line.sx(reading);
    line.setAttribute("visibility", x === null ? "hidden" : "visible");
    if (x !== null) { line.setAttribute("x1", x); line.setAttribute("x2", x); }
  });
};
