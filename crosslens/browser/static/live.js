// The live panels: your own text, and steering, run through every snapshot's model on demand
// (/api/live/...). On the feature list: the features firing most on a text in each reading, and a
// tokens x snapshots heatmap of the chosen one; on a feature page: its heatmap on a text, and its
// continuations of a prompt with and without it at every snapshot. Their state lives in the URL
// (text, reading, chosen; prompt, mode, strength, tokens, temperature, seed), so an answer can be shared.
"use strict";

const Live = {
  status: null,
  LIST_FIELDS: ["text", "reading", "chosen"],
  STEER_FIELDS: ["prompt", "mode", "strength", "tokens", "temperature", "seed"],
  listAnswer: null,
  listToken: 0,
  featureToken: 0,
  steerToken: 0,
  built: {},
  // This tab's name for the server: a newer question of its own replaces one still waiting, never another tab's.
  tab: Math.random().toString(36).slice(2, 12),
};

Live.params = function () {
  return new URLSearchParams(window.location.search);
};

// Put `updates` into the URL (an empty value removes the parameter), keeping everything else.
Live.setParams = function (updates) {
  const url = new URL(window.location.href);
  for (const [key, value] of Object.entries(updates)) {
    if (value === null || value === undefined || value === "") url.searchParams.delete(key);
    else url.searchParams.set(key, String(value));
  }
  window.history.replaceState(null, "", url.pathname + url.search);
  if (url.pathname === "/" && typeof ListView !== "undefined") ListView.shownSearch = window.location.search;
};

// The live models' status; asked again while they are loading or not yet asked to load.
Live.loadStatus = async function () {
  if (!Live.status || !["ready", "unavailable", "off"].includes(Live.status.state)) {
    Live.status = await CL.fetchJSON("/api/live/status?prepare=1");
  }
  return Live.status;
};

Live.say = function (holder, text, kind) {
  holder.textContent = text;
  holder.className = "live-status" + (kind ? " " + kind : "");
};

// Whether the panel can ask anything; where it cannot, it says why in one line.
Live.usable = async function (panel) {
  const line = panel.querySelector(".live-status");
  try {
    const status = await Live.loadStatus();
    if (status.state === "off" || status.state === "unavailable") {
      Live.say(line, (status.state === "off" ? "" : "Live panels unavailable: ") + status.problem, "error");
      panel.querySelectorAll("form button, form textarea, form input, form select").forEach((c) => { c.disabled = true; });
      panel.dataset.state = "unavailable";
      return false;
    }
  } catch (error) {
    Live.say(line, error.message, "error");
    return false;
  }
  return true;
};

// A failed request: its one line, and where the models turned out not to load, the panel says so.
Live.failed = async function (panel, error) {
  Live.say(panel.querySelector(".live-status"), error.message, "error");
  panel.dataset.state = "error";
  Live.status = null;
  await Live.usable(panel);
};

Live.waiting = function (line, what) {
  const loaded = Live.status && Live.status.resident && Live.status.resident.length;
  Live.say(line, what + (loaded ? "\u2026" : "\u2026 (the first request loads the snapshot models)"), "busy");
};

// After an answer the status is asked again (resident models, the budget), without waiting for it.
Live.refreshStatus = function () {
  CL.fetchJSON("/api/live/status").then((status) => { Live.status = status; }).catch(() => {});
};

Live.readingLabel = function (reading) {
  if (reading === -1) return "crosscoder code";
  const s = CL.run.snapshots[reading];
  return s ? s.label : `snapshot ${reading}`;
};

// --------------------------------------------------------------------------- the heatmap
// One feature's activation on each token (columns) in each reading (rows: the crosscoder's code,
// then every snapshot), coloured on one scale so that growth through training shows.
Live.heatmap = function (answer) {
  const scale = answer.max > 0 ? answer.max : 1;
  const head = CL.el("tr", {}, CL.el("th", { class: "corner", text: "token \u2192" }),
    ...answer.tokens.map((token) => CL.el("th", { class: "token", title: token }, CL.el("span", { text: CL.tokenText(token) }))),
    CL.el("th", { class: "rowmax", text: "max" }));
  const rows = answer.rows.map((reading, r) => {
    const label = Live.readingLabel(reading);
    const acts = answer.acts[r];
    const cells = acts.map((act, t) => {
      const cell = CL.el("td", { class: "tok cell", "data-act": act, "data-token": answer.tokens[t], "data-where": label });
      if (act > 0) cell.style.backgroundColor = `rgba(var(--token), ${(0.08 + 0.9 * Math.min(1, act / scale)).toFixed(3)})`;
      return cell;
    });
    return CL.el("tr", { "data-reading": reading, class: reading === -1 ? "code" : "" },
      CL.el("th", { class: "label", text: label }), ...cells,
      CL.el("td", { class: "rowmax", text: CL.fmt(Math.max(0, ...acts), 3) }));
  });
  const table = CL.el("table", { class: "heatmap", "data-feature": answer.feature }, CL.el("thead", {}, head), CL.el("tbody", {}, ...rows));
  return CL.el("div", { class: "heatmap-wrap" }, table);
};

// --------------------------------------------------------------------------- the list's panel
Live.buildList = function () {
  const panel = document.getElementById("live-list");
  const form = panel.querySelector("form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = document.getElementById("live-text").value;
    Live.setParams({ text, chosen: null });
    Live.runList();
  });
  document.getElementById("live-text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); form.requestSubmit(); }
  });
  const reading = document.getElementById("live-reading");
  reading.append(CL.el("option", { value: "-1", text: "crosscoder code (all snapshots)" }));
  for (const s of CL.run.snapshots) reading.append(CL.el("option", { value: String(s.snapshot), text: `${s.snapshot}: ${s.label}` }));
  reading.addEventListener("change", () => {
    Live.setParams({ reading: reading.value === "-1" ? null : reading.value, chosen: null });
    Live.renderList();
  });
  document.getElementById("live-clear").addEventListener("click", () => {
    document.getElementById("live-text").value = "";
    Live.setParams({ text: null, reading: null, chosen: null });
    Live.listAnswer = null;
    document.getElementById("live-list-result").hidden = true;
    Live.say(panel.querySelector(".live-status"), "");
    panel.dataset.state = "idle";
  });
};

Live.showList = async function () {
  const panel = document.getElementById("live-list");
  if (!CL.run.live) { panel.hidden = true; return; }
  panel.hidden = false;
  if (!Live.built.list) { Live.buildList(); Live.built.list = true; }
  const text = Live.params().get("text") || "";
  document.getElementById("live-text").value = text;
  if (!await Live.usable(panel)) return;
  if (text && (!Live.listAnswer || Live.listAnswer.text !== text)) await Live.runList();
  else if (text) Live.renderList();
};

Live.runList = async function () {
  const panel = document.getElementById("live-list");
  const line = panel.querySelector(".live-status");
  const text = Live.params().get("text") || "";
  const mine = ++Live.listToken;
  if (!await Live.usable(panel)) return;
  panel.dataset.state = "running";
  Live.waiting(line, "running your text through every snapshot");
  try {
    const answer = await CL.fetchJSON("/api/live/text?" + new URLSearchParams({ text, asker: Live.tab }).toString());
    if (mine !== Live.listToken) return;
    Live.listAnswer = answer;
    Live.say(line, `${answer.tokens.length} tokens through ${CL.run.n_snapshots} snapshots in ${CL.fmt(answer.ms, 3)} ms`);
    await Live.renderList();
    Live.refreshStatus();
  } catch (error) {
    if (mine !== Live.listToken) return;
    document.getElementById("live-list-result").hidden = true;
    await Live.failed(panel, error);
  }
};

Live.listColumns = [
  ["feature", "feature"], ["class", "class"], ["on your text", "max activation on your text (this reading)"],
  ["at token", "the token where it is largest"], ["emerges", ""], ["fades", ""], ["peak norm", ""],
  ["density", "share of the corpus's tokens it fires on (crosscoder code)"], ["max act", "largest activation in the corpus"],
  ["norm over training", ""], ["in your text", "your text around that token"],
];

Live.listRow = function (item, reading, answer) {
  const [feature, act, token] = item;
  const row = (answer.rows || {})[String(feature)] || {};
  const query = new URLSearchParams({ text: answer.text, snapshot: String(reading) }).toString();
  const around = { tokens: answer.tokens.slice(Math.max(0, token - 6), token + 5), focus: Math.min(token, 6) };
  around.acts = around.tokens.map((_, i) => (i === around.focus ? act : 0));
  return CL.el("tr", { "data-feature": feature, class: "pick" },
    CL.el("td", { class: "id" }, CL.el("a", { href: `/feature/${feature}?${query}`, text: `#${feature}` })),
    CL.el("td", { class: "text" }, row.class ? CL.chip(row.class) : null),
    CL.el("td", { class: "live-act", "data-act": act, text: CL.fmt(act, 4) }),
    CL.el("td", { class: "text", text: JSON.stringify(answer.tokens[token]) }),
    CL.el("td", { text: CL.fmtStep(row.emergence_step) }),
    CL.el("td", { text: CL.fmtStep(row.fade_step) }),
    CL.el("td", { text: CL.fmt(row.peak_decoder_norm) }),
    CL.el("td", { text: CL.fmtPercent(row.density) }),
    CL.el("td", { text: CL.fmt(row.max_activation) }),
    CL.el("td", { class: "text" }, CL.sparkline(row.norms || [], reading >= 0 ? reading : null, 100)),
    CL.el("td", { class: "context" }, CL.context(around, act)));
};

Live.renderList = async function () {
  const answer = Live.listAnswer;
  const params = Live.params();
  if (!answer || answer.text !== (params.get("text") || "")) return;
  const reading = Number(params.get("reading") || -1);
  document.getElementById("live-reading").value = String(reading);
  const items = answer.readings[String(reading)] || [];
  const holder = document.getElementById("live-list-table");
  document.getElementById("live-list-result").hidden = false;
  if (!items.length) {
    holder.replaceChildren(CL.el("div", { class: "empty", text: `No feature fires on this text in the ${Live.readingLabel(reading)}.` }));
    document.getElementById("live-list-heatmap").replaceChildren();
    document.getElementById("live-heatmap-title").textContent = "";
    document.getElementById("live-list").dataset.state = "done";
    return;
  }
  const head = CL.el("tr", {}, ...Live.listColumns.map(([label, title]) =>
    CL.el("th", { class: ["feature", "class", "at token", "norm over training", "in your text"].includes(label) ? "text" : "", title, text: label })));
  const body = CL.el("tbody", {}, ...items.map((item) => Live.listRow(item, reading, answer)));
  body.addEventListener("click", (event) => {
    const tr = event.target.closest("tr[data-feature]");
    if (!tr || event.target.closest("a")) return;
    Live.setParams({ chosen: tr.dataset.feature });
    Live.showChosen();
  });
  holder.replaceChildren(CL.el("div", { class: "table-wrap" }, CL.el("table", { class: "features live-features", "data-reading": reading },
    CL.el("thead", {}, head), body)));
  await Live.showChosen();
};

// The heatmap of the chosen feature (the URL's `chosen`, else the reading's first).
Live.showChosen = async function () {
  const answer = Live.listAnswer;
  const params = Live.params();
  const reading = params.get("reading") || "-1";
  const items = answer.readings[reading] || [];
  const chosen = Number(params.get("chosen") || (items[0] || [null])[0]);
  document.querySelectorAll("table.live-features tr[data-feature]").forEach((tr) => tr.classList.toggle("chosen", Number(tr.dataset.feature) === chosen));
  const panel = document.getElementById("live-list");
  const mine = ++Live.listToken;
  panel.dataset.state = "running";
  try {
    const heat = await CL.fetchJSON(`/api/live/feature/${chosen}/text?` + new URLSearchParams({ text: answer.text, asker: `${Live.tab}:list` }).toString());
    if (mine !== Live.listToken) return;
    document.getElementById("live-heatmap-title").replaceChildren(
      document.createTextNode(`Feature #${chosen} on your text, at every snapshot `),
      CL.el("a", { href: `/feature/${chosen}?` + new URLSearchParams({ text: answer.text, snapshot: reading }).toString(), text: "open its page" }));
    document.getElementById("live-list-heatmap").replaceChildren(Live.heatmap(heat));
    panel.dataset.state = "done";
  } catch (error) {
    if (mine !== Live.listToken) return;
    await Live.failed(panel, error);
  }
};

// --------------------------------------------------------------------------- a feature's panels
Live.buildFeature = function () {
  const textForm = document.querySelector("#live-feature form");
  textForm.addEventListener("submit", (event) => {
    event.preventDefault();
    Live.setParams({ text: document.getElementById("live-feature-text").value });
    Live.runHeatmap(Live.feature);
  });
  document.getElementById("live-feature-text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); textForm.requestSubmit(); }
  });
  const steerForm = document.querySelector("#live-steer form");
  steerForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const updates = {};
    for (const key of Live.STEER_FIELDS) updates[key] = document.getElementById("steer-" + key).value;
    Live.setParams(updates);
    Live.runSteering(Live.feature);
  });
  document.getElementById("steer-mode").addEventListener("change", (event) => {
    document.getElementById("steer-strength-label").textContent = event.target.value === "clamp" ? "clamp to" : "strength";
  });
};

// Called by the feature view once a feature is drawn (`detail`: its facts).
Live.showFeature = async function (feature, detail) {
  const panels = [document.getElementById("live-feature"), document.getElementById("live-steer")];
  for (const panel of panels) panel.hidden = !CL.run.live;
  if (!CL.run.live) return;
  if (!Live.built.feature) { Live.buildFeature(); Live.built.feature = true; }
  const changed = Live.feature !== feature;
  Live.feature = feature;
  const params = Live.params();
  const text = params.get("text") || (changed ? document.getElementById("live-feature-text").value : "");
  document.getElementById("live-feature-text").value = text;
  const strength = detail.max_activation > 0 ? Number(detail.max_activation.toPrecision(3)) : 10;
  const defaults = Object.assign({ prompt: "", strength }, CL.run.steer_defaults);
  for (const key of Live.STEER_FIELDS) {
    const control = document.getElementById("steer-" + key);
    control.value = params.has(key) ? params.get(key) : (key === "prompt" && !changed ? control.value : defaults[key]);
  }
  document.getElementById("steer-strength-label").textContent = document.getElementById("steer-mode").value === "clamp" ? "clamp to" : "strength";
  if (changed) {
    // answers still on their way are the last feature's: whatever this page asks next or not, drop them
    Live.featureToken++;
    Live.steerToken++;
    document.getElementById("live-feature-heatmap").replaceChildren();
    document.getElementById("live-steer-result").replaceChildren();
    for (const panel of panels) { Live.say(panel.querySelector(".live-status"), ""); panel.dataset.state = "idle"; }
  }
  if (!await Live.usable(panels[0]) || !await Live.usable(panels[1])) return;
  const runs = [];
  if (text) { Live.setParams({ text }); runs.push(Live.runHeatmap(feature)); }
  if (params.get("prompt") && params.has("strength")) runs.push(Live.runSteering(feature));
  await Promise.all(runs);
};

Live.runHeatmap = async function (feature) {
  const panel = document.getElementById("live-feature");
  const line = panel.querySelector(".live-status");
  const text = Live.params().get("text") || "";
  const mine = ++Live.featureToken;
  panel.dataset.state = "running";
  Live.waiting(line, "running your text through every snapshot");
  try {
    const heat = await CL.fetchJSON(`/api/live/feature/${feature}/text?` + new URLSearchParams({ text, asker: `${Live.tab}:feature` }).toString());
    if (mine !== Live.featureToken) return;
    document.getElementById("live-feature-heatmap").replaceChildren(Live.heatmap(heat));
    const firing = heat.rows.filter((_, r) => heat.acts[r].some((a) => a > 0)).map((reading) => Live.readingLabel(reading));
    Live.say(line, `${heat.tokens.length} tokens in ${CL.fmt(heat.ms, 3)} ms; ` + (firing.length
      ? `it fires in ${firing.length} of ${heat.rows.length} readings (largest ${CL.fmt(heat.max, 4)})` : "it fires on none of them"));
    panel.dataset.state = "done";
    Live.refreshStatus();
  } catch (error) {
    if (mine !== Live.featureToken) return;
    document.getElementById("live-feature-heatmap").replaceChildren();
    await Live.failed(panel, error);
  }
};

Live.continuation = function (tokens, other) {
  return CL.el("span", { class: "gen" }, ...tokens.map((token, i) =>
    CL.el("span", { class: other && other[i] !== token ? "diff" : "", text: CL.tokenText(token) })));
};

Live.runSteering = async function (feature) {
  const panel = document.getElementById("live-steer");
  const line = panel.querySelector(".live-status");
  const params = Live.params();
  const query = new URLSearchParams();
  for (const key of Live.STEER_FIELDS) if (params.get(key) !== null) query.set(key, params.get(key));
  query.set("asker", Live.tab);
  const mine = ++Live.steerToken;
  panel.dataset.state = "running";
  Live.waiting(line, "steering every snapshot");
  try {
    const answer = await CL.fetchJSON(`/api/live/feature/${feature}/steer?` + query.toString());
    if (mine !== Live.steerToken) return;
    const how = answer.mode === "clamp" ? `activation clamped to ${CL.fmt(answer.strength)}` : `direction added \u00d7 ${CL.fmt(answer.strength)}`;
    const rows = answer.snapshots.map((row) => CL.el("tr", { "data-snapshot": row.snapshot },
      CL.el("th", { class: "label", text: Live.readingLabel(row.snapshot) }),
      CL.el("td", { class: "val", title: "norm of the decoder direction at this snapshot", text: CL.fmt(row.direction_norm, 3) }),
      CL.el("td", { class: "plain" }, Live.continuation(row.plain, null)),
      CL.el("td", { class: "steered" }, Live.continuation(row.steered, row.plain))));
    const prompt = CL.el("p", { class: "prompt" }, CL.el("span", { class: "note", text: "prompt: " }),
      CL.el("span", { class: "gen", text: answer.prompt_tokens.map(CL.tokenText).join("") }));
    document.getElementById("live-steer-result").replaceChildren(prompt, CL.el("table", { class: "steering", "data-feature": answer.feature },
      CL.el("thead", {}, CL.el("tr", {}, CL.el("th", { text: "snapshot" }), CL.el("th", { text: "\u2016d\u209b\u2016" }),
        CL.el("th", { text: "without" }), CL.el("th", { text: `with feature #${answer.feature} (${how})` }))),
      CL.el("tbody", {}, ...rows)));
    const sampling = answer.temperature > 0 ? `sampled at temperature ${answer.temperature}, seed ${answer.seed}` : "greedy";
    Live.say(line, `${answer.n_tokens} tokens at each of ${rows.length} snapshots, ${sampling}, in ${CL.fmt(answer.ms, 3)} ms; tokens that differ are marked`);
    panel.dataset.state = "done";
    Live.refreshStatus();
  } catch (error) {
    if (mine !== Live.steerToken) return;
    document.getElementById("live-steer-result").replaceChildren();
    await Live.failed(panel, error);
  }
};
