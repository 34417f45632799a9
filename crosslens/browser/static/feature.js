// One feature through training. The reading (a snapshot, or -1: the crosscoder's own code)
// is chosen with the slider, the select or the arrow keys, and kept in the URL (?snapshot=S).
"use strict";

const ALL = -1;
const COLORS = { norm: "#1f77b4", density: "#2ca02c", max: "#ff7f0e", mean: "#9467bd", ie: "#1f77b4", ablation: "#d62728", relie: "#c7c7c7" };

let detail = null;
// the shown feature's contexts: {feature, readings: {"-1": {top, quantile}, ...}, fetched: Set of readings asked for}
let contexts = null;
let reading = ALL;
let featureToken = 0;
let switcherWired = false;

// The snapshot axis of the plots (charts.js): snapshots by index, labelled by their step (or, for
// a suite of models, by model).
function snapshotAxis(run) {
  const n = run.n_snapshots;
  const models = CL.ofModels(run);
  const stride = Math.max(1, Math.ceil(n / 12));
  const ticks = [];
  for (let i = 0; i < n; i += stride) ticks.push([i, models ? run.snapshots[i].label : CL.fmtStep(run.snapshots[i].step)]);
  return { title: models ? "model" : "training step", ticks, range: [-0.5, n - 0.5] };
}

function shownReading() {
  return reading === ALL ? null : reading;
}

function snapshotOfStep(run, step) {
  if (step === null || step === undefined) return null;
  const found = run.snapshots.find((s) => s.step === step);
  return found ? found.snapshot : null;
}

// Decoder norm (left) and firing (right) over training, with its events marked on the norm.
function drawTraining(run) {
  const x = run.snapshots.map((s) => s.snapshot);
  const labels = run.snapshots.map((s) => s.label);
  const series = detail.series;
  const norms = series.decoder_norm;
  const at = (name, values, digits = 4) => (i) => `${labels[i]}: ${name} ${CL.fmt(values[i], digits)}`;
  const left = [{ name: "decoder norm", type: "line", x, y: norms, color: COLORS.norm, markers: true, tip: at("decoder norm", norms) }];
  // models in no training order have no emergence, fade or dip to mark
  const marks = CL.ofModels(run) ? [] : [["emergence", detail.emergence_snapshot, "triangle-up"],
    ["peak", detail.peak_snapshot, "star"], ["fade", detail.fade_snapshot, "x"],
    ["dip", snapshotOfStep(run, detail.dip_step), "triangle-down"],
    ["recovery", snapshotOfStep(run, detail.recovery_step), "triangle-up-open"]];
  for (const [name, s, symbol] of marks) {
    if (s === null || s === undefined || norms[s] === null) continue;
    left.push({ name, type: "line", x: [s], y: [norms[s]], symbol, color: "#111", tip: () => `${name} at ${labels[s]}` });
  }
  const density = series.density.map((d) => (d > 0 ? d : null));
  const right = [
    { name: "density", type: "line", x, y: density, color: COLORS.density, markers: true,
      tip: (i) => `${labels[i]}: density ${CL.fmtPercent(density[i])}` },
    { name: "max act", type: "line", axis: "y2", x, y: series.max_activation, color: COLORS.max, tip: at("max act", series.max_activation) },
    { name: "mean act", type: "line", axis: "y2", x, y: series.mean_activation, color: COLORS.mean, dash: true,
      tip: at("mean act", series.mean_activation) },
  ];
  Charts.plot(document.getElementById("plot-training"), { panels: [
    { domain: [0, 0.42], x: snapshotAxis(run), y: { title: "decoder norm", zero: true }, series: left },
    { domain: [0.56, 0.94], x: snapshotAxis(run), y: { title: "firing density", type: "log", format: CL.fmtPercent },
      y2: { title: "activation", zero: true }, series: right },
  ] }, shownReading());
}

function histogramFigure(run) {
  const edges = run.histogram_edges || [];
  const centers = edges.slice(0, -1).map((e, i) => (e + edges[i + 1]) / 2);
  const widths = edges.slice(0, -1).map((e, i) => edges[i + 1] - e);
  // the bins are shared by every feature: show this feature's range, not the run's
  const shown = reading === ALL ? detail.histograms : [detail.histograms[reading]];
  const lastBin = Math.max(0, ...shown.filter(Boolean).map((h) => h.reduce((last, c, i) => (c > 0 ? i : last), 0)));
  const axis = { title: "activation", range: [edges[0] || 0, edges[lastBin + 1] || 1] };
  if (reading === ALL) {
    const z = detail.histograms.map((h) => (h ? h.map((c) => (c > 0 ? Math.log10(c) : null)) : null));
    const labels = run.snapshots.map((s) => s.label);
    return { margin: { r: 70 }, panels: [{ x: axis, y: Object.assign(snapshotAxis(run), { title: "snapshot" }),
      series: [{ name: "tokens", type: "heatmap", x: centers, y: run.snapshots.map((s) => s.snapshot), z, colorTitle: "log10 tokens",
        tip: (i, j) => `${labels[i]}: ${detail.histograms[i][j]} tokens at activation ${CL.fmt(centers[j], 3)}` }] }] };
  }
  const counts = detail.histograms[reading] || [];
  const silent = !counts.some((c) => c > 0);
  return { panels: [{ x: axis, y: { title: "firing tokens", type: "log" }, note: silent ? "it never fires at this snapshot" : null,
    series: [{ name: "tokens", type: "bar", x: centers, y: counts.map((c) => (c > 0 ? c : null)), widths, color: "#ff9d3c",
      tip: (i) => `activation ${CL.fmt(centers[i], 3)}: ${counts[i]} tokens` }] }] };
}

function drawHistogram(run) {
  const figure = histogramFigure(run);
  document.getElementById("histogram-reading").textContent = reading === ALL
    ? "every snapshot (per-snapshot code): pick one for its bars" : "at " + CL.snapshotLabel(reading);
  const holder = document.getElementById("plot-histogram");
  Charts.plot(holder, figure);
  if (reading !== ALL) holder.data[0].y = detail.histograms[reading] || [];  // the stored counts, zeros included
}

function drawCausal(run) {
  const tasks = Object.keys(detail.causal);
  const holder = document.getElementById("plot-causal");
  if (!tasks.length) {
    holder.replaceChildren();
    return;
  }
  document.getElementById("causal-panel").hidden = false;
  const x = run.snapshots.map((s) => s.snapshot);
  const labels = run.snapshots.map((s) => s.label);
  const series = [];
  tasks.forEach((task, k) => {
    const scores = detail.causal[task];
    const tag = tasks.length > 1 ? ` (${task})` : "";
    const tip = (name, values) => (i) => `${labels[i]}: ${name}${tag} ${CL.fmt(values[i], 4)}`;
    series.push({ name: "RelIE" + tag, type: "bar", axis: "y2", x, y: scores.relie, color: COLORS.relie, opacity: 0.6,
      tip: tip("RelIE", scores.relie) });
    series.push({ name: "IE" + tag, type: "line", x, y: scores.ie, color: COLORS.ie, markers: true, dash: k % 2 === 1,
      tip: tip("IE", scores.ie) });
    if (scores.ablation.some((v) => v !== null)) {
      series.push({ name: "ablation" + tag, type: "line", x, y: scores.ablation, color: COLORS.ablation, markers: true,
        dash: k % 2 === 1, tip: tip("ablation", scores.ablation) });
    }
  });
  const metrics = tasks.map((t) => (run.tasks.find((r) => r.task === t) || {}).metric).filter(Boolean);
  const note = document.getElementById("causal-note");
  note.textContent = `Effect on ${[...new Set(metrics)].join(", ") || "the task metric"}: `
    + "IE is the integrated-gradient indirect effect, ablation the metric's change with the feature ablated, "
    + "RelIE (bars, right axis) the snapshot's share of the feature's IE" + (tasks.length > 1 ? `; ${tasks[1]}'s lines are dashed.` : ".");
  const item = (swatch, text) => CL.el("span", {}, swatch, text);
  note.append(CL.el("div", { class: "key" }, item(CL.el("i", { class: "line", style: `--c: ${COLORS.ie}` }), "IE"),
    item(CL.el("i", { class: "line", style: `--c: ${COLORS.ablation}` }), "ablation"),
    item(CL.el("i", { class: "swatch", style: `background: ${COLORS.relie}` }), " RelIE")));
  Charts.plot(holder, { margin: { r: 50 }, panels: [{ x: snapshotAxis(run), y: { title: "effect", zero: true },
    y2: { title: "RelIE", range: [0, 1], ticks: [0, 0.25, 0.5, 0.75, 1].map((v) => [v, String(v)]) }, series }] }, shownReading());
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
  const models = CL.ofModels(run);
  document.getElementById("training-title").textContent = models ? "Across the models" : "Through training";
  for (const key of document.querySelectorAll(".events-key")) key.hidden = models;
  const strongest = d.peak_snapshot === null ? "none" : run.snapshots[d.peak_snapshot].label;
  const facts = models ? [fact("strongest in", strongest, "the model of its largest decoder norm")] : [
    fact("emerges", stepFact(run, d.emergence_step, d.emergence_snapshot), "first snapshot where it is present"),
    fact("peaks", stepFact(run, d.peak_step, d.peak_snapshot), "snapshot of its largest decoder norm"),
    fact("fades", d.fade_step === null ? "never" : stepFact(run, d.fade_step, d.fade_snapshot), "falls below the fade threshold here and does not climb back to the presence line"),
  ];
  if (!models && d.dip_step !== null) {
    facts.push(fact("dips / recovers", `${CL.fmtStep(d.dip_step)} \u2192 ${CL.fmtStep(d.recovery_step)}`, "dip-and-recover"));
  }
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
  if (!detail) return Promise.resolve();
  const asked = reading;
  const shownContexts = ensureContexts().then(() => { if (reading === asked) renderContexts(); });
  renderContexts();
  renderLogits(run);
  renderFacts(run);
  drawHistogram(run);
  Charts.setReading(document.getElementById("plot-training"), shownReading());
  Charts.setReading(document.getElementById("plot-causal"), shownReading());
  if (EmergencePanel.shown) Charts.setReading(document.getElementById("plot-emergence"), shownReading());
  return shownContexts.then(() => { document.body.dataset.reading = String(reading); });
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
// contexts at a snapshot wait for the run's facts, which say whether the URL's is one (a
// ?snapshot= past the last is shown at the last). The contexts at the other readings follow once
// the page is drawn.
let featureRequest = null;
function requestFeature(feature, requested) {
  const at = readingOf(requested);
  if (!featureRequest || featureRequest.feature !== feature) {
    featureRequest = { feature, reading: null, contexts: null, detail: CL.fetchJSON(`/api/feature/${feature}`) };
    featureRequest.detail.catch(() => {});
  }
  if (featureRequest.reading !== at && (CL.run || at === ALL)) {
    featureRequest.reading = at;
    featureRequest.contexts = CL.fetchJSON(`/api/feature/${feature}/contexts?snapshot=${at}`);
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
    Explained.show(feature); // explained.js: its explanations per phase, when the run has them
    renderLogits(run);
    syncSwitcher(run);
    keepContexts(feature, await requests.contexts, [requests.reading]);
    if (mine !== featureToken) return;
    renderContexts();
    document.getElementById("causal-panel").hidden = true;
    drawTraining(run);
    drawHistogram(run);
    drawCausal(run);
    EmergencePanel.draw(run, detail);
  } catch (error) {
    if (mine === featureToken) showError(error.message);
    return;
  }
  if (mine !== featureToken) return;
  document.body.dataset.reading = String(reading);
  CL.done("feature", "plots-rendered");
  loadAllContexts(feature);
  Live.showFeature(feature, detail);  // the live panels (live.js), once the stored page is drawn
}
