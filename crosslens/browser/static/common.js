// Shared by the feature list and the feature pages: fetching, number formats, the top bar,
// class chips, sparklines, contexts drawn as tokens coloured by activation, and when a view is done.
"use strict";

const CL = {};

CL.fetchJSON = async function (url) {
  const response = await fetch(url);
  const payload = await response.json();
  if (!response.ok) throw new Error(payload.error || response.statusText);
  return payload;
};

CL.fmt = function (value, digits = 4) {
  if (value === null || value === undefined || Number.isNaN(value)) return "\u2014";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value) && Math.abs(value) < 1e7) return value.toLocaleString("en-US");
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return value.toExponential(2);
  return String(Number(value.toPrecision(digits)));
};

CL.fmtPercent = function (value) {
  if (value === null || value === undefined) return "\u2014";
  if (value === 0) return "0%";
  const pct = 100 * value;
  return (pct < 1e-4 ? pct.toExponential(1) : String(Number(pct.toPrecision(pct < 0.01 ? 2 : 3)))) + "%";
};

CL.fmtStep = function (step) {
  if (step === null || step === undefined) return "\u2014";
  for (const [size, suffix] of [[1e12, "T"], [1e9, "B"], [1e6, "M"], [1e3, "k"]]) {
    if (Math.abs(step) >= size) return String(Number((step / size).toPrecision(4))) + suffix;
  }
  return String(step);
};

CL.el = function (tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
};

CL.CLASSES = ["initialization", "persistent", "transient", "dead"];

CL.chip = function (name) {
  return CL.el("span", { class: "chip " + (CL.CLASSES.includes(name) ? name : "other-class"), text: name });
};

// The run, fetched once; the top bar names it.
CL.run = null;
CL.loadRun = async function () {
  CL.run = await CL.fetchJSON("/api/run");
  const run = CL.run;
  const cc = run.crosscoder || {};
  const parts = [CL.runName(), cc.hook_name,
    `${run.n_features.toLocaleString("en-US")} features \u00d7 ${run.n_snapshots} ${CL.ofModels(run) ? "models" : "snapshots"}`];
  document.querySelector("header.bar .run").textContent = parts.filter(Boolean).join(" \u00b7 ");
  const report = document.querySelector("header.bar a.report");
  if (!run.report) report.remove();
  if (!run.complete) {
    document.querySelector("header.bar").after(CL.el("div", { class: "notice",
      text: "This database was named with --database and read as it is: its sealed record was not checked." }));
  }
  return run;
};

// A suite of distinct models (model diffing): its snapshots are models, in no training order.
CL.ofModels = function (run) {
  return Boolean(run.suite && run.suite.family === "models");
};

CL.runName = function () {
  return (CL.run && CL.run.suite && CL.run.suite.model_id) || "crosslens browse";
};

// When the current view was asked for (performance.now(); 0 is the page's own navigation),
// and how long each view took from there until it was drawn (read by benchmarks/browse.py).
CL.routeStart = 0;
CL.timings = [];
CL.done = function (view, mark) {
  CL.timings.push({ view, path: window.location.pathname + window.location.search, ms: performance.now() - CL.routeStart });
  performance.mark(mark);
  document.body.dataset.state = "ready";
};

CL.snapshotLabel = function (snapshot) {
  if (snapshot === -1) return "crosscoder code (all snapshots)";
  const s = CL.run.snapshots[snapshot];
  return s ? `${s.label} (snapshot ${snapshot})` : `snapshot ${snapshot}`;
};

// A decoder-norm trajectory as a small SVG line (values are norm / peak, 0..1).
CL.sparkline = function (values, mark, width = 120, height = 26) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  if (!values.length) return svg;
  const x = (i) => (values.length === 1 ? width / 2 : 1 + (i * (width - 2)) / (values.length - 1));
  const y = (v) => height - 2 - v * (height - 4);
  const path = document.createElementNS(ns, "polyline");
  path.setAttribute("points", values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" "));
  path.setAttribute("fill", "none");
  path.setAttribute("stroke", "#1f77b4");
  path.setAttribute("stroke-width", "1.5");
  svg.append(path);
  if (mark !== null && mark !== undefined && mark < values.length) {
    const dot = document.createElementNS(ns, "circle");
    dot.setAttribute("cx", x(mark));
    dot.setAttribute("cy", y(values[mark]));
    dot.setAttribute("r", "2.6");
    dot.setAttribute("fill", "#d62728");
    svg.append(dot);
  }
  const title = document.createElementNS(ns, "title");
  title.textContent = "decoder norm / peak over snapshots";
  svg.append(title);
  return svg;
};

// Token text as it should read in a window: line breaks and tabs made visible.
CL.tokenText = function (text) {
  return text.replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5");
};

// A context window: each token a span whose background grows with the feature's activation
// on it (relative to `scale`), the focus token outlined; hovering shows token and value.
CL.context = function (ctx, scale, needle) {
  const line = CL.el("div", { class: "ctx" });
  const marked = CL.matchedTokens(ctx.tokens, needle);
  ctx.tokens.forEach((text, i) => {
    const act = ctx.acts[i];
    const alpha = scale > 0 ? Math.min(1, Math.max(0, act / scale)) : 0;
    const span = CL.el("span", { class: "tok" + (i === ctx.focus ? " focus" : "") + (/^<\|.*\|>$/.test(text) ? " special" : ""),
      "data-act": act, "data-token": text, text: CL.tokenText(text) });
    if (alpha > 0) span.style.backgroundColor = `rgba(var(--token), ${(0.08 + 0.8 * alpha).toFixed(3)})`;
    if (marked.has(i)) span.classList.add("mark");
    line.append(span);
  });
  return line;
};

// The part of a context from `left` tokens before its focus to `right` after (the list's snippets).
CL.around = function (ctx, left, right) {
  const start = Math.max(0, ctx.focus - left);
  const end = ctx.focus + right + 1;
  return Object.assign({}, ctx, { tokens: ctx.tokens.slice(start, end), acts: ctx.acts.slice(start, end), focus: ctx.focus - start });
};

// The tokens a search string covers in a window (it may span several tokens), underlined.
CL.matchedTokens = function (tokens, needle) {
  const marked = new Set();
  if (!needle) return marked;
  const text = tokens.join("").toLowerCase();
  const starts = [];
  tokens.reduce((at, token) => { starts.push(at); return at + token.length; }, 0);
  const low = needle.toLowerCase();
  for (let at = text.indexOf(low); at !== -1; at = text.indexOf(low, at + 1)) {
    tokens.forEach((token, i) => { if (starts[i] < at + low.length && starts[i] + token.length > at) marked.add(i); });
  }
  return marked;
};

// One tooltip for every token on the page (event delegation keeps thousands of spans cheap).
CL.installTooltip = function () {
  const tip = CL.el("div", { id: "tooltip" });
  document.body.append(tip);
  document.addEventListener("mouseover", (event) => {
    const tok = event.target.closest ? event.target.closest(".tok, [data-tip]") : null;
    if (!tok) { tip.style.display = "none"; return; }
    const where = tok.dataset.where ? `  ${tok.dataset.where}` : "";
    tip.textContent = tok.dataset.tip  // a chart's point, bar or cell (charts.js)
      || `${JSON.stringify(tok.dataset.token)}${where}  activation ${CL.fmt(Number(tok.dataset.act), 4)}`;
    tip.style.display = "block";
  });
  document.addEventListener("mousemove", (event) => {
    if (tip.style.display === "block") {
      tip.style.left = Math.min(event.clientX + 12, window.innerWidth - tip.offsetWidth - 8) + "px";
      tip.style.top = event.clientY + 16 + "px";
    }
  });
};

// The top bar's "feature #" box opens that feature's page.
CL.installGoto = function () {
  const form = document.querySelector("header.bar form.goto");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const id = form.querySelector("input").value.replace(/[#\s]/g, "");
    if (/^\d+$/.test(id)) CL.navigate(`/feature/${id}`);
  });
};
