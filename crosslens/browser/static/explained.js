// The run's explanations (crosslens explain): the feature list's search by meaning, its filters
// and columns, and a feature page's explanations per phase with their scores and drift matrix.
// list.js and feature.js call in here at a few marked places; without explanations nothing shows.
"use strict";

const Explained = {
  PHASE_LABELS: { code: "crosscoder code", emergence: "emergence", peak: "peak", last: "last snapshot" },
  token: 0,

  available() {
    return Boolean(CL.run && CL.run.explained && !CL.run.explained.problem);
  },

  // The list: reveal the search box and filters, add the sorts, and say why explanations are missing.
  buildControls(run) {
    const found = run.explained;
    if (found && found.problem) {
      document.querySelector("header.bar").after(CL.el("div", { class: "notice", text: found.problem }));
    }
    if (!this.available()) return;
    document.getElementById("meaning-filters").hidden = false;
    const note = `${found.explanations.toLocaleString("en-US")} explanations of ${found.features.toLocaleString("en-US")} features`;
    document.getElementById("meaning-count").textContent = note;
    const sort = document.getElementById("sort");
    for (const key of run.explained_sorts) sort.append(CL.el("option", { value: key, text: SORT_LABELS[key] || key }));
    const drifted = document.getElementById("drifted");
    drifted.addEventListener("change", () => change({ drifted: drifted.checked ? "1" : "" }));
  },

  showState(state) {
    const drifted = document.getElementById("drifted");
    if (drifted) drifted.checked = state.drifted === "1";
    for (const opt of document.querySelectorAll("#sort option[value=match]")) opt.disabled = !state.meaning;
  },

  // A search by meaning ranks its matches, unless another order was asked for at the same time.
  adjust(state, updates) {
    if (!("meaning" in updates) || "sort" in updates) return;
    if (state.meaning) Object.assign(state, { sort: "match", order: "asc" });
    else if (state.sort === "match") { delete state.sort; delete state.order; }
  },

  columns() {
    if (!this.available()) return [];
    return [
      { key: "explanation", label: "explanation (best match)", text: true, render: (row) => this.cell(row) },
      { key: "explained.detection", label: "detection", sort: "detection", render: (row) => this.scoreCell(row) },
    ];
  },

  cell(row) {
    const td = CL.el("td", { class: "explanation" });
    const found = row.explanation;
    if (!found) {
      td.append(CL.el("span", { class: "note", text: "not explained" }));
      return td;
    }
    const where = found.snapshot < 0 ? "code" : CL.run.snapshots[found.snapshot].label;
    td.append(CL.el("span", { class: "xtext", text: found.text }), CL.el("span", { class: "xwhere", text: ` ${where}` }));
    if (row.explained && row.explained.flagged) td.append(this.driftChip(row.explained.drift));
    return td;
  },

  scoreCell(row) {
    const value = row.explained ? row.explained.detection : null;
    return CL.el("td", { "data-key": "detection", text: value === null || value === undefined ? "\u2014" : value.toFixed(2) });
  },

  driftChip(drift) {
    return CL.el("span", { class: "chip drifted", title: `its explanation at one phase scores ${CL.fmt(drift, 2)} lower at another`,
      text: "meaning drifted" });
  },

  // A feature page: its explanations per phase, their detection scores, and the drift matrix.
  async show(feature) {
    const mine = ++this.token;
    const panel = document.getElementById("explanations-panel");
    const chip = document.getElementById("drift-chip");
    chip.replaceChildren();
    if (!this.available()) { panel.hidden = true; return; }
    panel.hidden = false;
    delete panel.dataset.feature;
    document.getElementById("explanations").replaceChildren(CL.el("p", { class: "note", text: "loading\u2026" }));
    document.getElementById("drift-matrix").replaceChildren();
    let found;
    try {
      found = await CL.fetchJSON(`/api/feature/${feature}/explanations`);
    } catch (error) {
      if (mine === this.token) document.getElementById("explanations").replaceChildren(CL.el("p", { class: "error", text: error.message }));
      return;
    }
    if (mine !== this.token) return;
    this.render(found);
    if (found.verdict && found.verdict.flagged) chip.append(this.driftChip(found.verdict.drift));
    panel.dataset.feature = String(feature);
  },

  phaseText(item) {
    return item.phases.length ? item.phases.map((p) => this.PHASE_LABELS[p] || p).join(", ") : "\u2014";
  },

  readingText(snapshot) {
    return snapshot < 0 ? "every snapshot at once" : CL.run.snapshots[snapshot].label;
  },

  render(found) {
    const holder = document.getElementById("explanations");
    if (!found.explanations.length) {
      holder.replaceChildren(CL.el("p", { class: "note", text: "Not explained yet: crosslens explain RUN --features " + found.feature }));
      return;
    }
    const rows = found.explanations.map((item) => CL.el("tr", { "data-snapshot": item.snapshot, "data-source": item.source },
      CL.el("td", { class: "phase", text: this.phaseText(item) }),
      CL.el("td", { class: "where", text: this.readingText(item.snapshot) }),
      CL.el("td", { class: "xtext", text: item.text }),
      CL.el("td", { class: "score", title: "detection score: balanced accuracy on held-out contexts of its own reading",
        text: item.detection === null || item.detection === undefined ? "\u2014" : item.detection.toFixed(2) }),
      CL.el("td", { class: "where", text: [item.source, item.model].filter(Boolean).join(" \u00b7 ") })));
    const head = CL.el("tr", {}, ...["phase", "reading", "explanation", "detection", "from"].map((t) => CL.el("th", { text: t })));
    holder.replaceChildren(CL.el("table", { class: "explanations" }, CL.el("thead", {}, head), CL.el("tbody", {}, ...rows)));
    this.renderMatrix(found);
  },

  // Rows: the life phases' explanations; columns: the contexts of each life phase; cells: balanced accuracy.
  renderMatrix(found) {
    const life = found.phases.filter((p) => p.phase !== "code");
    const readings = [...new Set(life.map((p) => p.explained))];
    const rows = found.explanations.filter((e) => readings.includes(e.snapshot) && e.source === "crosslens");
    const holder = document.getElementById("drift-matrix");
    if (readings.length < 2 || !rows.length) { holder.replaceChildren(); return; }
    const label = (s) => `${this.phaseText({ phases: life.filter((p) => p.explained === s).map((p) => p.phase) })} (${this.readingText(s)})`;
    const head = CL.el("tr", {}, CL.el("th", { text: "explanation of \u2193, judged on the contexts of \u2192" }),
      ...readings.map((s) => CL.el("th", { text: label(s) })));
    const body = rows.map((e) => CL.el("tr", { "data-snapshot": e.snapshot }, CL.el("th", { text: label(e.snapshot) }),
      ...readings.map((s) => {
        const score = e.scores[String(s)];
        const value = score ? score.balanced_accuracy : null;
        const cell = CL.el("td", { class: "cell" + (s === e.snapshot ? " own" : ""), "data-scored-on": s,
          text: value === null ? "\u2014" : value.toFixed(2),
          title: score ? `${score.tp} of ${score.p} activating and ${score.tn} of ${score.n} silent contexts judged right` : "not scored" });
        if (value !== null) cell.style.backgroundColor = `rgba(43, 108, 176, ${(0.08 + 0.6 * Math.max(0, value - 0.5) * 2).toFixed(3)})`;
        return cell;
      })));
    const rule = found.drift_rule || {};
    const note = `Drift: an explanation scoring at least ${rule.min_score} on its own phase's contexts and ${rule.min_drop} less on another's.`;
    holder.replaceChildren(CL.el("h3", { text: "Drift matrix (balanced accuracy)" }),
      CL.el("table", { class: "drift" }, CL.el("thead", {}, head), CL.el("tbody", {}, ...body)), CL.el("p", { class: "note", text: note }));
  },
};
