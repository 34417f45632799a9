// The feature list: search, filters, sort and pages. Its whole state lives in the URL's query
// string, so a filtered, sorted page can be bookmarked and shared.
"use strict";

const FIELDS = ["q", "ids", "class", "emerged_from", "emerged_to", "at", "state", "task", "relie_class",
  "min_relevance", "contested", "lineage", "agreement", "diffing", "sort", "order", "offset", "limit", "meaning", "drifted", "min_detection"];
const TEXT_FIELDS = ["q", "ids", "min_relevance", "meaning", "min_detection"];
const SORT_LABELS = {
  feature: "feature id", emergence_step: "emergence step", peak_step: "peak step", fade_step: "fade step",
  dip_step: "dip step", peak_decoder_norm: "peak decoder norm", density: "density", mean_activation: "mean activation",
  max_activation: "max activation", relevance: "largest |IE|", at_decoder_norm: "decoder norm at snapshot",
  at_relative_norm: "norm / peak at snapshot", at_density: "density at snapshot",
  at_mean_activation: "mean activation at snapshot", at_max_activation: "max activation at snapshot",
  match: "best match to the meaning", detection: "detection score", drift: "drift between phases",
};
// Ascending first for ids and steps (earliest first), descending for the metrics (largest first).
const ASCENDING_FIRST = new Set(["feature", "emergence_step", "peak_step", "fade_step", "dip_step", "match"]);

let state = {};
let requestCounter = 0;

function readState() {
  const params = new URLSearchParams(window.location.search);
  state = {};
  for (const key of FIELDS) if (params.has(key)) state[key] = params.get(key);
  state.limit = state.limit || String(CL.run.page_size);
}

function writeURL() {
  const params = new URLSearchParams();
  for (const key of FIELDS) {
    const value = state[key];
    if (value === undefined || value === "" || (key === "offset" && value === "0")) continue;
    if (key === "limit" && value === String(CL.run.page_size)) continue;
    params.set(key, value);
  }
  // the live panel's text keeps its place in the URL (live.js)
  const kept = new URLSearchParams(window.location.search);
  for (const key of Live.LIST_FIELDS) if (kept.get(key)) params.set(key, kept.get(key));
  const query = params.toString();
  window.history.replaceState(null, "", "/" + (query ? "?" + query : ""));
  ListView.shownSearch = window.location.search;
}

function option(value, text, selected) {
  return CL.el("option", { value, text, selected: selected ? true : null });
}

function buildControls(run) {
  const classes = document.getElementById("classes");
  const models = CL.ofModels(run); // snapshots in no training order: no emergence step, and the
  // through-time classes, always empty, are left out
  document.getElementById("emergence-step").hidden = models;
  const names = Object.keys(run.classes).filter((name) => !models || run.classes[name]);
  for (const name of names) {
    const box = CL.el("input", { type: "checkbox", value: name, "data-class": name });
    classes.append(CL.el("label", {}, box, CL.chip(name),
      CL.el("span", { class: "count", text: run.classes[name].toLocaleString("en-US") })));
  }
  const from = document.getElementById("emerged_from");
  const to = document.getElementById("emerged_to");
  from.append(option("", "first"));
  to.append(option("", "last"));
  for (const s of run.snapshots) {
    from.append(option(String(s.step), s.label));
    to.append(option(String(s.step), s.label));
  }
  const at = document.getElementById("at");
  at.append(option("", "(none)"));
  for (const s of run.snapshots) at.append(option(String(s.snapshot), `${s.snapshot}: ${s.label}`));
  const sort = document.getElementById("sort");
  for (const key of [...run.sorts.feature, ...run.sorts.snapshot]) {
    if (key === "relevance" && !run.tasks.length) continue;
    sort.append(option(key, SORT_LABELS[key] || key));
  }
  EmergencePanel.buildFilters(run);  // the emergence check's filters (emergence.js)
  if (!run.tasks.length) document.getElementById("task-filters").remove();
  else {
    const task = document.getElementById("task");
    for (const t of run.tasks) task.append(option(t.task, `${t.task} (${t.n_examples} examples)`));
    const relie = document.getElementById("relie_class");
    for (const name of run.relie_classes) relie.append(option(name, name));
  }
  Explained.buildControls(run); // explained.js: the search by meaning, when the run has explanations
}

function offerPageSize(value) {
  // --page-size or the URL's limit may be a size the selector does not list: list it, in order
  const select = document.getElementById("limit");
  if (!value || [...select.options].some((o) => o.value === value)) return;
  const after = [...select.options].find((o) => Number(o.value) > Number(value));
  select.insertBefore(option(value, value), after || null);
}

function showState() {
  offerPageSize(state.limit);
  for (const key of ["q", "ids", "emerged_from", "emerged_to", "at", "state", "task", "relie_class", "min_relevance",
    "contested", "lineage", "agreement", "diffing", "sort", "limit", "meaning", "min_detection"]) {
    const control = document.getElementById(key);
    if (control) control.value = state[key] || (key === "sort" ? "feature" : "");
  }
  const chosen = new Set((state.class || "").split(",").filter(Boolean));
  for (const box of document.querySelectorAll("#classes input")) box.checked = chosen.has(box.value);
  const hasAt = Boolean(state.at);
  document.getElementById("state").disabled = !hasAt;
  for (const opt of document.querySelectorAll("#sort option")) opt.disabled = opt.value.startsWith("at_") && !hasAt;
  document.getElementById("order").textContent = state.order === "desc" ? "descending" : "ascending";
  Explained.showState(state);
  EmergencePanel.showState();  // the agreement counts of the lineage kind the URL chose
}

function change(updates, { keepOffset = false } = {}) {
  Object.assign(state, updates);
  Explained.adjust(state, updates);
  if (!state.at) {
    delete state.state;
    if ((state.sort || "").startsWith("at_")) delete state.sort;
  }
  if (!keepOffset) state.offset = "0";
  showState();
  writeURL();
  load();
}

function wireControls() {
  let timer = null;
  for (const key of TEXT_FIELDS) {
    const input = document.getElementById(key);
    if (!input) continue;
    input.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => change({ [key]: input.value }), 250);
    });
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") { clearTimeout(timer); change({ [key]: input.value }); }
    });
  }
  for (const key of ["emerged_from", "emerged_to", "at", "state", "task", "relie_class", "contested", "lineage", "agreement", "diffing", "limit"]) {
    const control = document.getElementById(key);
    if (control) control.addEventListener("change", () => change({ [key]: control.value }));
  }
  document.getElementById("sort").addEventListener("change", (event) => {
    const sort = event.target.value;
    change({ sort, order: ASCENDING_FIRST.has(sort) ? "asc" : "desc" });
  });
  document.getElementById("order").addEventListener("click", () => change({ order: state.order === "desc" ? "asc" : "desc" }));
  document.getElementById("classes").addEventListener("change", () => {
    const chosen = [...document.querySelectorAll("#classes input:checked")].map((box) => box.value);
    change({ class: chosen.join(",") });
  });
  document.getElementById("reset").addEventListener("click", () => {
    state = { limit: state.limit };
    change({});
  });
  document.getElementById("prev").addEventListener("click", () => {
    change({ offset: String(Math.max(0, Number(state.offset || 0) - Number(state.limit))) }, { keepOffset: true });
  });
  document.getElementById("next").addEventListener("click", () => {
    change({ offset: String(Number(state.offset || 0) + Number(state.limit)) }, { keepOffset: true });
  });
}

function columns(run, at) {
  const models = CL.ofModels(run); // snapshots in no training order: no emergence or fade to list
  const cols = [
    { key: "feature", label: "feature", sort: "feature" },
    { key: "class", label: "class", text: true },
    ...(models ? [] : [{ key: "emergence_step", label: "emerges", sort: "emergence_step", format: CL.fmtStep },
      { key: "fade_step", label: "fades", sort: "fade_step", format: CL.fmtStep }]),
    { key: "peak_decoder_norm", label: "peak norm", sort: "peak_decoder_norm" },
    { key: "density", label: "density", sort: "density", format: CL.fmtPercent },
    { key: "max_activation", label: "max act", sort: "max_activation" },
  ];
  if (run.tasks.length) cols.push({ key: "relevance", label: "|IE|", sort: "relevance" });
  if (run.emergence.computed) cols.push({ key: "check", label: models ? "latent scaling" : "emergence check", text: true });
  if (at !== null) {
    const label = run.snapshots[at].label;
    cols.push(
      { key: "at.relative_norm", label: `norm / peak at ${label}`, sort: "at_relative_norm", at: true },
      { key: "at.density", label: `density at ${label}`, sort: "at_density", format: CL.fmtPercent, at: true },
      { key: "at.max_activation", label: `max act at ${label}`, sort: "at_max_activation", at: true },
    );
  }
  cols.push(...Explained.columns());
  cols.push({ key: "norms", label: models ? "norm per model" : "norm over training", text: true },
    { key: "snippet", label: at === null ? "top context (crosscoder code)" : `top context at ${run.snapshots[at].label}`, text: true });
  return cols;
}

function cell(row, col, at) {
  if (col.render) return col.render(row);
  if (col.key === "feature") {
    const href = `/feature/${row.feature}` + (at !== null ? `?snapshot=${at}` : "");
    return CL.el("td", { class: "id" }, CL.el("a", { href, text: `#${row.feature}` }));
  }
  if (col.key === "class") return CL.el("td", { class: "text" }, CL.chip(row.class));
  if (col.key === "check") return CL.el("td", { class: "text" }, ...EmergencePanel.listChips(row));
  if (col.key === "norms") return CL.el("td", { class: "text" }, CL.sparkline(row.norms, at, 100));
  if (col.key === "snippet") {
    const td = CL.el("td", { class: "context" });
    // a search shows the whole window, where the string may lie away from the focus token
    if (row.snippet) td.append(CL.context(state.q ? row.snippet : CL.around(row.snippet, 5, 4), row.snippet.activation, state.q));
    else td.append(CL.el("span", { class: "note", text: "no context (never fires here)" }));
    return td;
  }
  const value = col.key.startsWith("at.") ? (row.at || {})[col.key.slice(3)] : row[col.key];
  return CL.el("td", { class: col.at ? "at" : "", "data-key": col.key, text: (col.format || CL.fmt)(value) });
}

function render(page, run) {
  const at = state.at ? Number(state.at) : null;
  const cols = columns(run, at);
  const sort = state.sort || "feature";
  const head = CL.el("tr", {}, ...cols.map((col) => {
    const sorted = col.sort === sort;
    const th = CL.el("th", { class: [col.text ? "text" : "", col.at ? "at" : "", col.sort ? "sortable" : "",
      sorted ? "sorted" : "", sorted && state.order !== "desc" ? "asc" : ""].filter(Boolean).join(" "),
      "data-sort": col.sort || null, text: col.label, title: col.sort ? `sort by ${SORT_LABELS[col.sort]}` : null });
    if (col.sort) th.addEventListener("click", () => change({ sort: col.sort,
      order: sorted ? (state.order === "desc" ? "asc" : "desc") : (ASCENDING_FIRST.has(col.sort) ? "asc" : "desc") }));
    return th;
  }));
  const body = CL.el("tbody", {}, ...page.rows.map((row) =>
    CL.el("tr", { "data-feature": row.feature }, ...cols.map((col) => cell(row, col, at)))));
  const holder = document.getElementById("table");
  holder.replaceChildren(page.rows.length
    ? CL.el("div", { class: "table-wrap" }, CL.el("table", { class: "features" }, CL.el("thead", {}, head), body))
    : CL.el("div", { class: "empty", text: "No feature matches these filters." }));
  const first = page.total ? page.offset + 1 : 0;
  const last = page.offset + page.rows.length;
  let summary = `${page.total.toLocaleString("en-US")} of ${run.n_features.toLocaleString("en-US")} features`;
  if (page.meaning) summary += " whose explanations match, best first";
  if (page.search && !page.search.complete) summary += " (partial: a 1-2 character string is scanned for a moment; type 3 or more to search every feature)";
  document.getElementById("summary").textContent = summary;
  document.getElementById("timing").textContent = `${page.ms} ms in the database`;
  const pages = Math.max(1, Math.ceil(page.total / page.limit));
  document.getElementById("page").textContent = `${first.toLocaleString("en-US")}\u2013${last.toLocaleString("en-US")} \u00b7 page ${Math.floor(page.offset / page.limit) + 1} of ${pages.toLocaleString("en-US")}`;
  document.getElementById("prev").disabled = page.offset === 0;
  document.getElementById("next").disabled = last >= page.total;
}

async function load(early) {
  const mine = ++requestCounter;
  document.body.dataset.state = "loading";
  const params = new URLSearchParams();
  for (const key of FIELDS) if (state[key]) params.set(key, state[key]);
  try {
    const page = await (early || CL.fetchJSON("/api/features?" + params.toString()));
    if (mine !== requestCounter) return;
    render(page, CL.run);
  } catch (error) {
    if (mine !== requestCounter) return;
    document.getElementById("table").replaceChildren(CL.el("div", { class: "empty error", text: error.message }));
    document.getElementById("summary").textContent = "";
  }
  ListView.shownSearch = window.location.search;
  document.body.dataset.request = String(mine);
  if (!document.getElementById("list-view").hidden) CL.done("list", "results-rendered");
}

// The list view: built once; shown again as it was left when its URL is unchanged (back from a feature).
const ListView = {
  built: false,
  shownSearch: null,
  async show(early) {
    document.title = CL.runName();
    if (!this.built) {
      buildControls(CL.run);
      wireControls();
      this.built = true;
    }
    if (this.shownSearch !== null && this.shownSearch === window.location.search) {
      CL.done("list", "results-rendered");
      return;
    }
    readState();
    showState();
    Live.showList();  // the live panel, beside the stored list (it does not hold the list up)
    await load(early);
  },
};
