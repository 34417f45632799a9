// One feature through training. The reading (a snapshot, or -1: the crosscoder's own code)
// is chosen with the slider, the select or the arrow keys, and kept in the URL (?snapshot=S).
"use strict";

const ALL = -1;
// no mode bar: dragging zooms, a double click resets, and the page draws faster without it
const PLOT_CONFIG = { displaylogo: false, responsive: true, displayModeBar: false };
const COLORS = { norm: "#1f77b4", density: "#2ca02c", max: "#ff7f0e", mean: "#9467bd", ie: "#1f77b4", ablation: "#d62728", relie: "#c7c7c7" };

let detail = null;
// the shown feature's contexts: {feature, readings: {"-1": {top, quantile}, ...}, fetched: Set of readings asked for}
let contexts = null;
let reading = ALL;
let featureToken = 0;
let switcherWired = false;

function snapshotAxis(run) {
  const n = run.n_snapshots;
  const stride = Math.max(1, Math.ceil(n / 12));
  const ticks = [];
  for (let i = 0; i < n; i += stride) ticks.push(i);
  return { tickmode: "array", tickvals: ticks, ticktext: ticks.map((i) => CL.fmtStep(run.snapshots[i].step)),
    title: { text: "training step", font: { size: 11 } }, range: [-0.5, n - 0.5], zeroline: false };
}

function baseLayout(extra) {
  return Object.assign({ margin: { l: 56, r: 16, t: 8, b: 40 }, font: { size: 11 }, hovermode: "x unified",
    legend: { orientation: "h", y: 1.12, x: 0 }, plot_bgcolor: "#fff" }, extra);
}

function readingLine(axes) {
  if (reading === ALL) return [];
  return axes.map((xref) => ({ type: "line", xref, yref: "paper", x0: reading, x1: reading, y0: 0, y1: 1,
    line: { color: "#d62728", width: 1.5, dash: "dot" } }));
}

function snapshotOfStep(run, step) {
  if (step === null || step === undefined) return null;
  const found = run.snapshots.find((s) => s.step === step);
  return found ? found.snapshot : null;
}

// Decoder norm (left) and firing (right) over training: one figure, since each plotly figure
// costs its own layout pass and the page is drawn on every feature opened.
function drawTraining(run) {
  const x = run.snapshots.map((s) => s.snapshot);
  const labels = run.snapshots.map((s) => s.label);
  const series = detail.series;
  const norms = series.decoder_norm;
  const traces = [{ x, y: norms, name: "decoder norm", mode: "lines+markers", line: { color: COLORS.norm },
    customdata: labels, hovertemplate: "%{customdata}: %{y:.4g}<extra>norm</extra>" }];
  const marks = [["emergence", detail.emergence_snapshot, "triangle-up"], ["peak", detail.peak_snapshot, "star"],
    ["fade", detail.fade_snapshot, "x"], ["dip", snapshotOfStep(run, detail.dip_step), "triangle-down"],
    ["recovery", snapshotOfStep(run, detail.recovery_step), "triangle-up-open"]];
  for (const [name, s, symbol] of marks) {
    if (s === null || s === undefined || norms[s] === null) continue;
    traces.push({ x: [s], y: [norms[s]], name, mode: "markers", marker: { symbol, size: 11, color: "#111" }, hoverinfo: "skip" });
  }
  traces.push(
    { x, y: series.density.map((d) => (d > 0 ? d : null)), name: "density", xaxis: "x2", yaxis: "y2", mode: "lines+markers",
      line: { color: COLORS.density }, customdata: labels, hovertemplate: "%{customdata}: %{y:.3%}<extra>density</extra>" },
    { x, y: series.max_activation, name: "max act", xaxis: "x2", yaxis: "y3", mode: "lines", line: { color: COLORS.max },
      customdata: labels, hovertemplate: "%{customdata}: %{y:.4g}<extra>max act</extra>" },
    { x, y: series.mean_activation, name: "mean act", xaxis: "x2", yaxis: "y3", mode: "lines",
      line: { color: COLORS.mean, dash: "dash" }, customdata: labels, hovertemplate: "%{customdata}: %{y:.4g}<extra>mean act</extra>" },
  );
  const title = (text) => ({ text, font: { size: 11 } });
  return Plotly.newPlot("plot-training", traces, baseLayout({
    xaxis: Object.assign(snapshotAxis(run), { domain: [0, 0.42] }),
    yaxis: { title: title("decoder norm"), rangemode: "tozero", anchor: "x" },
    xaxis2: Object.assign(snapshotAxis(run), { domain: [0.56, 0.94], anchor: "y2" }),
    yaxis2: { title: title("firing density"), type: "log", tickformat: "~%", anchor: "x2" },
    yaxis3: { title: title("activation"), overlaying: "y2", side: "right", anchor: "x2", rangemode: "tozero", showgrid: false },
    // the key is HTML above the plot: a plotly legend and unified hover labels double its drawing time
    showlegend: false, hovermode: "closest", margin: { l: 56, r: 16, t: 8, b: 40 }, shapes: readingLine(["x", "x2"]) }), PLOT_CONFIG);
}

function histogramFigure(run) {
  const edges = run.histogram_edges || [];
  const centers = edges.slice(0, -1).map((e, i) => (e + edges[i + 1]) / 2);
  const widths = edges.slice(0, -1).map((e, i) => edges[i + 1] - e);
  // the bins are shared by every feature: show this feature's range, not the run's
  const shown = reading === ALL ? detail.histograms : [detail.histograms[reading]];
  const lastBin = Math.max(0, ...shown.filter(Boolean).map((h) => h.reduce((last, c, i) => (c > 0 ? i : last), 0)));
  const axis = { title: { text: "activation", font: { size: 11 } }, range: [edges[0] || 0, edges[lastBin + 1] || 1] };
  if (reading === ALL) {
    const z = detail.histograms.map((h) => (h ? h.map((c) => (c > 0 ? Math.log10(c) : null)) : null));
    return { data: [{ type: "heatmap", x: centers, y: run.snapshots.map((s) => s.snapshot), z, colorscale: "Viridis",
      customdata: detail.histograms, hovertemplate: "activation %{x:.3g}<br>snapshot %{y}<br>%{customdata} tokens<extra></extra>",
      colorbar: { title: { text: "log10 tokens", side: "right" }, thickness: 10 } }],
      layout: baseLayout({ xaxis: axis, yaxis: Object.assign(snapshotAxis(run), { title: { text: "snapshot", font: { size: 11 } } }),
        hovermode: "closest" }) };
  }
  const counts = detail.histograms[reading] || [];
  const silent = !counts.some((c) => c > 0);
  return { data: [{ type: "bar", x: centers, y: counts, width: widths,
    marker: { color: "#ff9d3c" }, hovertemplate: "activation %{x:.3g}: %{y} tokens<extra></extra>" }],
    layout: baseLayout({ xaxis: axis, yaxis: { title: { text: "firing tokens", font: { size: 11 } }, type: "log" },
      bargap: 0.05, hovermode: "closest", annotations: silent ? [{ text: "it never fires at this snapshot", showarrow: false,
        xref: "paper", yref: "paper", x: 0.5, y: 0.5, font: { size: 13, color: "#5f6b7a" } }] : [] }) };
}

function drawHistogram(run) {
  const figure = histogramFigure(run);
  document.getElementById("histogram-reading").textContent = reading === ALL
    ? "every snapshot (per-snapshot code): pick one for its bars" : "at " + CL.snapshotLabel(reading);
  return Plotly.react("plot-histogram", figure.data, figure.layout, PLOT_CONFIG);
}

function drawCausal(run) {
  const tasks = Object.keys(detail.causal);
  if (!tasks.length) {
    Plotly.purge("plot-causal");
    return Promise.resolve();
  }
  document.getElementById("causal-panel").hidden = false;
  const x = run.snapshots.map((s) => s.snapshot);
  const traces = [];
  const dashes = ["solid", "dot", "dash", "longdash"];
  tasks.forEach((task, k) => {
    const scores = detail.causal[task];
    const tag = tasks.length > 1 ? ` (${task})` : "";
    traces.push({ x, y: scores.relie, name: "RelIE" + tag, type: "bar", yaxis: "y2", marker: { color: COLORS.relie, opacity: 0.6 },
      hovertemplate: "%{y:.3f}<extra>RelIE" + tag + "</extra>" });
    traces.push({ x, y: scores.ie, name: "IE" + tag, mode: "lines+markers", line: { color: COLORS.ie, dash: dashes[k % 4] },
      hovertemplate: "%{y:.4g}<extra>IE" + tag + "</extra>" });
    if (scores.ablation.some((v) => v !== null)) {
      traces.push({ x, y: scores.ablation, name: "ablation" + tag, mode: "lines+markers", connectgaps: false,
        line: { color: COLORS.ablation, dash: dashes[k % 4] }, hovertemplate: "%{y:.4g}<extra>ablation" + tag + "</extra>" });
    }
  });
  const metrics = tasks.map((t) => (run.tasks.find((r) => r.task === t) || {}).metric).filter(Boolean);
  document.getElementById("causal-note").textContent = `Effect on ${[...new Set(metrics)].join(", ") || "the task metric"}: `
    + "IE is the integrated-gradient indirect effect, ablation the metric's change with the feature ablated, "
    + "RelIE (bars, right axis) the snapshot's share of the feature's IE.";
  return Plotly.newPlot("plot-causal", traces, baseLayout({ xaxis: snapshotAxis(run), barmode: "group",
    yaxis: { title: { text: "effect", font: { size: 11 } }, zeroline: true },
    yaxis2: { title: { text: "RelIE", font: { size: 11 } }, overlaying: "y", side: "right", range: [0, 1], dtick: 0.25, showgrid: false },
    margin: { l: 56, r: 50, t: 8, b: 40 }, shapes: readingLine(["x"]) }), PLOT_CONFIG);
}

function fact(key, value, title) {
  return CL.el("div", { title }, CL.el("span", { class: "k", text: key }), CL.el("span", { class: "v", text: value }));
}

function stepFact(run, step, snapshot) {
  if (step === null || step === undefined) return "\u2014";
  const s = snapshot !== null && snapshot !== undefined ? run.snapshots[snapshot] : null;
  return s ? `${s.label} (#${snapshot})` : `step ${step}`;
}

function renderFacts(run) {
  const d = detail;
  document.getElementById("title").textContent = `Feature #${d.feature}`;
  document.title = `#${d.feature} \u00b7 ${CL.runName()}`;
  document.getElementById("class-chip").replaceChildren(CL.chip(d.class));
  const chips = Object.entries(d.causal).filter(([, s]) => s.relie_class)
    .map(([task, s]) => CL.el("span", { class: "chip other-class", title: `RelIE class on ${task}`, text: `${task}: ${s.relie_class}` }));
  document.getElementById("relie-chips").replaceChildren(...chips);
  const facts = [
    fact("emerges", stepFact(run, d.emergence_step, d.emergence_snapshot), "first snapshot where it is present"),
    fact("peaks", stepFact(run, d.peak_step, d.peak_snapshot), "snapshot of its largest decoder norm"),
    fact("fades", d.fade_step === null ? "never" : stepFact(run, d.fade_step, d.fade_snapshot), "stays below the fade threshold from here"),
  ];
  if (d.dip_step !== null) facts.push(fact("dips / recovers", `${CL.fmtStep(d.dip_step)} \u2192 ${CL.fmtStep(d.recovery_step)}`, "dip-and-recover"));
  facts.push(
    fact("peak decoder norm", CL.fmt(d.peak_decoder_norm)),
    fact("density", CL.fmtPercent(d.density), "share of tokens where the crosscoder's code is > 0"),
    fact("mean activation", CL.fmt(d.mean_activation), "over the tokens it fires on"),
    fact("max activation", CL.fmt(d.max_activation)),
  );
  if (d.relevance !== null) facts.push(fact("largest |IE|", CL.fmt(d.relevance), "over tasks and snapshots"));
  document.getElementById("facts").replaceChildren(...facts);
  const query = `?snapshot=${reading}`;
  for (const [id, target] of [["feature-previous", d.neighbours.previous], ["feature-next", d.neighbours.next]]) {
    const link = document.getElementById(id);
    link.hidden = target === null;
    if (target !== null) link.href = `/feature/${target}${query}`;
    link.textContent = id === "feature-previous" ? `\u2039 #${target}` : `#${target} \u203a`;
  }
}

function contextTable(items, scale, kind) {
  if (!items || !items.length) return CL.el("p", { class: "note", text: kind === "top" ? "It never fires in this reading." : "None." });
  const rows = items.map((ctx) => CL.el("tr", { "data-rank": ctx.rank },
    kind === "quantile" ? CL.el("td", { class: "where", text: ctx.quantile === null ? "" : `quantile ${CL.fmt(ctx.quantile, 3)}` }) : null,
    CL.el("td", { class: "act", text: CL.fmt(ctx.activation, 4) }),
    CL.el("td", {}, CL.context(ctx, scale)),
    CL.el("td", { class: "where", text: `row ${ctx.seq}, pos ${ctx.pos}` })));
  return CL.el("table", { class: "contexts", "data-kind": kind }, CL.el("tbody", {}, ...rows));
}

function renderContexts() {
  const here = reading === ALL ? "the crosscoder's code (every snapshot read at once)" : CL.snapshotLabel(reading) + ", per-snapshot code";
  document.getElementById("contexts-reading").textContent = "in " + here;
  if (!contexts || !contexts.fetched.has(reading)) {
    const wait = CL.el("p", { class: "note", text: "loading\u2026" });
    document.getElementById("contexts-top").replaceChildren(wait);
    document.getElementById("contexts-quantile").replaceChildren();
    return;
  }
  const found = contexts.readings[String(reading)] || { top: [], quantile: [] };
  const scale = found.top.length ? found.top[0].activation : Math.max(0, ...found.quantile.map((c) => c.activation));
  document.getElementById("contexts-top").replaceChildren(contextTable(found.top, scale, "top"));
  document.getElementById("contexts-quantile").replaceChildren(contextTable(found.quantile, scale, "quantile"));
}

function logitTable(pairs, scale, kind) {
  return CL.el("table", { class: "logit", "data-kind": kind }, CL.el("tbody", {}, ...pairs.map(([token, value]) =>
    CL.el("tr", {}, CL.el("td", { class: "tokcell" }, CL.el("span", { class: "tokpill", text: CL.tokenText(token) })),
      CL.el("td", { class: "barcell" }, CL.el("div", { class: "bar " + (value >= 0 ? "pos" : "neg"),
        style: `width: ${scale > 0 ? (100 * Math.abs(value)) / scale : 0}%` })),
      CL.el("td", { class: "val", text: (value >= 0 ? "+" : "") + CL.fmt(value, 3) })))));
}

function renderLogits(run) {
  const holder = document.getElementById("logits");
  if (reading === ALL) {
    document.getElementById("logits-reading").textContent = "of each snapshot's decoder through its own unembedding (click one)";
    const rows = detail.logits.map((l, s) => l && CL.el("tr", { style: "cursor: pointer", onclick: () => setReading(s) },
      CL.el("td", { class: "val", text: run.snapshots[s].label }),
      CL.el("td", { class: "tokcell" }, ...l.top.slice(0, 3).map(([t]) => CL.el("span", { class: "tokpill", text: CL.tokenText(t) + " " }))),
      CL.el("td", { class: "tokcell" }, ...l.bottom.slice(0, 3).map(([t]) => CL.el("span", { class: "tokpill", text: CL.tokenText(t) + " " })))));
    holder.replaceChildren(CL.el("table", { class: "logit", "data-kind": "overview" },
      CL.el("thead", {}, CL.el("tr", {}, CL.el("th", { text: "snapshot" }), CL.el("th", { text: "promotes" }), CL.el("th", { text: "suppresses" }))),
      CL.el("tbody", {}, ...rows.filter(Boolean))));
    return;
  }
  document.getElementById("logits-reading").textContent = "at " + CL.snapshotLabel(reading);
  const logits = detail.logits[reading];
  if (!logits) { holder.replaceChildren(CL.el("p", { class: "note", text: "None stored for this snapshot." })); return; }
  const scale = Math.max(0, ...logits.top.map(([, v]) => Math.abs(v)), ...logits.bottom.map(([, v]) => Math.abs(v)));
  holder.replaceChildren(CL.el("div", { class: "logits" },
    CL.el("div", {}, CL.el("h3", { text: "promotes" }), logitTable(logits.top, scale, "top")),
    CL.el("div", {}, CL.el("h3", { text: "suppresses" }), logitTable(logits.bottom, scale, "bottom"))));
}

function syncSwitcher(run) {
  document.getElementById("snapshot").value = String(reading);
  document.getElementById("snapshot-select").value = String(reading);
  document.getElementById("back").disabled = reading === ALL;
  document.getElementById("forward").disabled = reading === run.n_snapshots - 1;
  const url = new URL(window.location.href);
  url.searchParams.set("snapshot", String(reading));
  window.history.replaceState(null, "", url.pathname + url.search);
}

function setReading(value) {
  const run = CL.run;
  reading = Math.max(ALL, Math.min(run.n_snapshots - 1, Number(value)));
  syncSwitcher(run);
  if (!detail || !window.Plotly) return Promise.resolve();
  const asked = reading;
  const shownContexts = ensureContexts().then(() => { if (reading === asked) renderContexts(); });
  renderContexts();
  renderLogits(run);
  renderFacts(run);
  const plots = [shownContexts, drawHistogram(run), Plotly.relayout("plot-training", { shapes: readingLine(["x", "x2"]) })];
  if (EmergencePanel.shown) plots.push(Plotly.relayout("plot-emergence", { shapes: readingLine(["x"]) }));
  if (Object.keys(detail.causal).length) plots.push(Plotly.relayout("plot-causal", { shapes: readingLine(["x"]) }));
  return Promise.all(plots).then(() => { document.body.dataset.reading = String(reading); });
}

function wireSwitcher(run) {
  const slider = document.getElementById("snapshot");
  slider.max = String(run.n_snapshots - 1);
  const select = document.getElementById("snapshot-select");
  select.append(CL.el("option", { value: "-1", text: "-1: crosscoder code (all snapshots)" }));
  for (const s of run.snapshots) select.append(CL.el("option", { value: String(s.snapshot), text: `${s.snapshot}: ${s.label}` }));
  slider.addEventListener("input", () => setReading(slider.value));
  select.addEventListener("change", () => setReading(select.value));
  document.getElementById("back").addEventListener("click", () => setReading(reading - 1));
  document.getElementById("forward").addEventListener("click", () => setReading(reading + 1));
  document.addEventListener("keydown", (event) => {
    if (document.getElementById("feature-view").hidden || !detail) return;
    if (event.target.closest("input, select, textarea") || event.altKey || event.ctrlKey || event.metaKey) return;
    if (event.key === "ArrowLeft") { event.preventDefault(); setReading(reading - 1); }
    if (event.key === "ArrowRight") { event.preventDefault(); setReading(reading + 1); }
  });
}

function showError(message) {
  document.getElementById("feature-content").hidden = true;
  const box = document.getElementById("feature-error");
  box.hidden = false;
  box.replaceChildren(CL.el("div", { class: "empty error", text: message }),
    CL.el("p", {}, CL.el("a", { href: "/", text: "back to the feature list" })));
  document.body.dataset.state = "ready";
}

function readingOf(requested) {
  const n = CL.run ? CL.run.n_snapshots : Infinity;
  return requested === null || !/^-?\d+$/.test(requested) ? ALL : Math.max(ALL, Math.min(n - 1, Number(requested)));
}

// A feature's facts and its contexts at one reading, asked for as early as possible (app.js asks
// on a page load, before the run's facts arrive) and taken by the view that shows them. The
// contexts at the other readings follow once the page is drawn.
let featureRequest = null;
function requestFeature(feature, requested) {
  const at = readingOf(requested);
  if (!featureRequest || featureRequest.feature !== feature || featureRequest.reading !== at) {
    featureRequest = { feature, reading: at, detail: CL.fetchJSON(`/api/feature/${feature}`),
      contexts: CL.fetchJSON(`/api/feature/${feature}/contexts?snapshot=${at}`) };
    featureRequest.detail.catch(() => {});
    featureRequest.contexts.catch(() => {});
  }
  return featureRequest;
}

function keepContexts(feature, payload, asked) {
  if (!contexts || contexts.feature !== feature) return;
  Object.assign(contexts.readings, payload.readings);
  for (const r of asked) contexts.fetched.add(r);
}

function loadAllContexts(feature) {
  const all = [ALL, ...CL.run.snapshots.map((s) => s.snapshot)];
  CL.fetchJSON(`/api/feature/${feature}/contexts`).then((payload) => keepContexts(feature, payload, all)).catch(() => {});
}

// The contexts at the reading now shown, fetched first where the full set has not arrived yet.
async function ensureContexts() {
  if (!contexts || contexts.fetched.has(reading)) return;
  const feature = contexts.feature;
  const asked = reading;
  keepContexts(feature, await CL.fetchJSON(`/api/feature/${feature}/contexts?snapshot=${asked}`), [asked]);
}

// Show one feature at a reading (the URL's ?snapshot=, else -1): text first, then the plots.
async function showFeature(feature, requested) {
  const mine = ++featureToken;
  const run = CL.run;
  document.body.dataset.state = "loading";
  reading = readingOf(requested);
  const requests = requestFeature(feature, requested);
  featureRequest = null;
  const plotly = CL.loadPlotly();
  if (!switcherWired) { wireSwitcher(run); switcherWired = true; }
  detail = null;
  contexts = { feature, readings: {}, fetched: new Set() };
  document.getElementById("feature-error").hidden = true;
  document.getElementById("title").textContent = `Feature #${feature}`;
  try {
    const found = await requests.detail;
    if (mine !== featureToken) return;
    detail = found;
    document.getElementById("feature-content").hidden = false;
    renderFacts(run);
    renderLogits(run);
    syncSwitcher(run);
    keepContexts(feature, await requests.contexts, [requests.reading]);
    if (mine !== featureToken) return;
    renderContexts();
    await plotly;
    if (mine !== featureToken) return;
    document.getElementById("causal-panel").hidden = true;
    await Promise.all([drawTraining(run), drawHistogram(run), drawCausal(run), EmergencePanel.draw(run, detail)]);
  } catch (error) {
    if (mine === featureToken) showError(error.message);
    return;
  }
  if (mine !== featureToken) return;
  document.body.dataset.reading = String(reading);
  CL.done("feature", "plots-rendered");
  loadAllContexts(feature);
}
