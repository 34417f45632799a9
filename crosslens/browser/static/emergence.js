// The emergence check and lineage in the browser: the list's two filters and its verdict chips,
// and the feature page's panel: the decoder-norm and latent-scaled emergence curves on one plot,
// the feature's lineage events, and its relatives at every snapshot, each a link.
"use strict";

const EmergencePanel = {
  shown: false,
  check: null,  // the run's emergence counts, once the list's filters are built
  NO_CHECK: "This database holds no emergence check: run `crosslens analyze` on the run (with its store), then "
    + "`crosslens dashboards RUN --overwrite`.",

  // The list's filters: disabled, with the command that fills them, where the database has no check.
  // Two models (a base and its fine-tune) have no training order: latent scaling's verdict on the
  // one-model-only latents replaces the emergence and lineage filters.
  buildFilters(run) {
    const check = run.emergence;
    if (check.diffing) return this.buildDiffingFilter(run, check);
    const hint = document.getElementById("emergence-hint");
    if (!check.computed) {
      for (const id of ["contested", "lineage", "agreement"]) document.getElementById(id).disabled = true;
      hint.textContent = this.NO_CHECK;
      return;
    }
    for (const opt of document.querySelectorAll("#contested option")) {
      const n = opt.value === "any" ? check.contested.earlier + check.contested.later : check.contested[opt.value];
      if (n !== undefined) opt.textContent += ` (${n})`;
    }
    for (const opt of document.querySelectorAll("#lineage option")) {
      const n = opt.value === "any" ? null : check.events[opt.value];
      if (n !== undefined && n !== null) opt.textContent += ` (${n})`;
    }
    if (!check.latent_scaling) {
      document.getElementById("contested").disabled = true;
      hint.textContent = "Latent scaling was not run (no activation store given to analyze): lineage only.";
    } else {
      hint.textContent = `Latent scaling on ${check.n_tokens.toLocaleString("en-US")} tokens: contested where it `
        + "dates a feature two or more snapshots away from its decoder norm."
        + (check.set_aside ? ` Lineage events the activations do not hold (${check.set_aside}) are set aside: `
          + "a feature's page lists them, the filter does not." : "");
    }
    hint.append(" ", CL.el("span", { id: "agreement-hint" }));
    this.check = check;
    this.agreementFilter(check);
    document.getElementById("lineage").addEventListener("change", () => this.agreementFilter(check));
  },

  // The list's state was set from its URL: the agreement counts follow its lineage kind.
  showState() {
    if (this.check) this.agreementFilter(this.check);
  },

  // The agreement filter: which crosscoder the lineage was checked against, and how many events of the
  // lineage filter's kind it makes too; disabled, naming the command that measures it, where the
  // database holds no agreement, or one whose crosscoder is gone or was trained again since.
  agreementFilter(check) {
    const select = document.getElementById("agreement"), hint = document.getElementById("agreement-hint");
    const agreement = check.agreement;
    if (!agreement) {
      select.disabled = true;
      hint.textContent = check.agreement_dropped
        ? `Lineage agreement left out: ${check.agreement_dropped}. Measure it again with `
          + "`crosslens analyze --lineage-against OTHER`, then `crosslens dashboards RUN --overwrite`."
        : "Lineage not checked against another crosscoder (`crosslens analyze --lineage-against OTHER`).";
      return;
    }
    const kind = document.getElementById("lineage").value;
    const kinds = kind && kind !== "any" ? [kind] : Object.keys(agreement.read);
    const sum = (counts) => kinds.reduce((total, k) => total + (counts[k] || 0), 0);
    const made = sum(agreement.made), read = sum(agreement.read);
    for (const opt of select.querySelectorAll("option")) {  // events, as the lineage filter counts them
      opt.dataset.label ??= opt.textContent;
      if (opt.value === "made") opt.textContent = `${opt.dataset.label} (${made})`;
      if (opt.value === "not made") opt.textContent = `${opt.dataset.label} (${read - made})`;
    }
    const events = kinds.length === 1 ? `${kinds[0]}${read === 1 ? "" : "s"}` : `event${read === 1 ? "" : "s"}`;
    hint.textContent = `Lineage checked against ${this.runName(agreement)}: ${made} of ${read} ${events} made there too `
      + `(agreement ${agreement.line} or more).`;
  },

  runName(agreement) {
    return agreement.against.split("/").filter(Boolean).pop() || agreement.against;
  },

  buildDiffingFilter(run, check) {
    document.getElementById("emergence-filters").hidden = true;
    document.getElementById("diffing-filters").hidden = false;
    const total = Object.values(check.diffing).reduce((a, b) => a + b, 0);
    for (const opt of document.querySelectorAll("#diffing option")) {
      const n = opt.value === "any" ? total : check.diffing[opt.value];
      if (n !== undefined) opt.textContent += ` (${n})`;
    }
    const [a, b] = run.snapshots.map((s) => s.label);
    document.getElementById("diffing-hint").textContent = !check.computed ? this.NO_CHECK
      : !check.latent_scaling ? "Latent scaling was not run (no activation store given to analyze)."
      : `Latent scaling on ${check.n_tokens.toLocaleString("en-US")} tokens: whether ${a}'s activations hold a `
        + `${b}-only latent (and the reverse), though its decoder there shrank.`;
    document.getElementById("diffing").disabled = !check.latent_scaling;
  },

  // A listed feature's verdict: contested (which way) and the kinds of lineage event it is in; with
  // two models, latent scaling's verdict on a one-model-only latent.
  listChips(row) {
    const chips = [];
    if (row.diffing) chips.push(CL.el("span", { class: `chip ${this.diffingClass(row.diffing)}`, text: row.diffing }));
    if (row.contested) {
      chips.push(CL.el("span", { class: "chip contested", text: `contested: ${row.contested}`,
        title: `latent scaling dates it at ${CL.fmtStep(row.scaled_emergence_step)}` }));
    }
    for (const kind of row.lineage || []) {
      // unmade: no event of this kind is made by the crosscoder the lineage was checked against
      const made = (row.lineage_made || {})[kind];
      chips.push(CL.el("span", { class: made === false ? "chip lineage unmade" : "chip lineage", text: kind,
        title: made === true ? "the crosscoder the lineage was checked against makes it too"
          : made === false ? "not made by the crosscoder the lineage was checked against" : "" }));
    }
    return chips.length ? chips : [CL.el("span", { class: "note", text: "\u2014" })];
  },

  diffingClass(verdict) {
    return `diffing ${verdict.replace(" ", "-")}`;
  },

  verdict(check, twoModels) {
    if (!check) return ["unmeasured", "no latent scaling"];
    if (twoModels) {
      return check.diffing ? [this.diffingClass(check.diffing), `latent scaling: ${check.diffing}`]
        : ["unmeasured", "both models' decoders write it"];
    }
    if (!check.measured) return ["unmeasured", "not measured (fires on too few sampled tokens)"];
    if (check.contested) return ["contested", `contested: present ${check.contested} by latent scaling`];
    return ["agrees", "latent scaling agrees"];
  },

  // The feature page's panel; hidden where the database holds no check.
  draw(run, detail) {
    this.shown = Boolean(run.emergence.computed);
    document.getElementById("emergence-panel").hidden = !this.shown;
    if (!this.shown) return Promise.resolve();
    const check = detail.emergence_check;
    const twoModels = Boolean(run.emergence.diffing);
    document.getElementById("emergence-title").textContent = twoModels ? "Which model holds it?" : "Is this emergence real?";
    document.getElementById("relatives-title").textContent = CL.ofModels(run) ? "Relatives in each model" : "Relatives through time";
    const [kind, words] = this.verdict(check, twoModels);
    document.getElementById("emergence-chip").replaceChildren(CL.el("span", { class: `chip ${kind}`, text: words }));
    document.getElementById("emergence-note").replaceChildren(...this.note(run, detail, check));
    document.getElementById("lineage-events").replaceChildren(this.events(run, detail.lineage));
    document.getElementById("relatives").replaceChildren(this.relatives(run, detail.relatives));
    return this.plot(run, detail, check);
  },

  // The check in words: both emergences, and where an early presence lives; a decoupled one names
  // the latents that carried it, each a link.
  note(run, detail, check) {
    if (!check) return ["Lineage only: analyze had no activation store to fit latent scaling on."];
    if (run.emergence.diffing) return [this.diffingWords(run, detail, check)];
    // a snapshot's label, or "never" where the check found none (a dead feature's)
    const label = (s) => (s === null || s === undefined ? "never" : run.snapshots[s].label);
    const at = (s) => (s === null || s === undefined ? "never" : `at ${label(s)}`);
    const out = [`Emerges ${at(check.decoder_snapshot)} by its decoder norm, ${at(check.scaled_snapshot)} by latent `
      + `scaling (its amplitude in each snapshot's activations where a latent present there points its way, else in the `
      + `error without it, on the ${check.n_fire.toLocaleString("en-US")} sampled tokens it fires on); reported: `
      + label(check.reported_snapshot) + "."];
    if (check.early_presence === "error") out.push(" The early presence is in the reconstruction error without it: its decoder shrank there.");
    if (check.early_presence === "reconstruction") {
      out.push(" The early presence is carried by other latents: decoupled");
      const early = [];
      for (let s = check.scaled_snapshot; s < check.decoder_snapshot; s++) if (check.carriers[s]) early.push(s);
      early.forEach((s, k) => {
        const [latent, cosine] = check.carriers[s];
        out.push(k ? ", " : " (", this.link(latent, s), ` at ${run.snapshots[s].label}, cosine ${CL.fmt(cosine, 2)}`);
      });
      out.push(early.length ? ")." : ".");
    }
    return out;
  },

  // Two models: which one's decoder writes the latent, and whether the other's activations hold it.
  diffingWords(run, detail, check) {
    const norm = detail.series.relative_norm;
    const [own, other] = (norm[0] >= norm[1] ? [0, 1] : [1, 0]).map((s) => run.snapshots[s].label);
    const where = `${other}'s activations`;
    return {
      specific: `Only ${own}'s decoder writes it, and ${where} do not hold it: it is ${own}'s own.`,
      shrinkage: `Only ${own}'s decoder writes it, but ${where} hold it, in the reconstruction error without it: `
        + `its decoder there shrank to nothing (Complete Shrinkage).`,
      decoupling: `Only ${own}'s decoder writes it, but ${where} hold it, reconstructed there by other latents `
        + "(Latent Decoupling).",
      "not measured": "It fires on too few of the sampled tokens for latent scaling to say which model holds it.",
    }[check.diffing] || "Both models' decoders write it: latent scaling judges the one-model-only latents.";
  },

  plot(run, detail, check) {
    const x = run.snapshots.map((s) => s.snapshot);
    const labels = run.snapshots.map((s) => s.label);
    const norm = detail.series.relative_norm;
    const at = (name, values) => (i) => `${labels[i]}: ${name} ${CL.fmt(values[i], 3)}`;
    const series = [{ name: "decoder norm / peak", type: "line", x, y: norm, color: "#1f77b4", markers: true,
      tip: at("decoder norm", norm) }];
    // two models have no emergence to mark, only each model's share
    const twoModels = Boolean(run.emergence.diffing);
    const marks = twoModels ? []
      : [["decoder norm", check ? check.decoder_snapshot : detail.emergence_snapshot, norm, "#1f77b4"]];
    if (check) {
      series.push({ name: "latent-scaled presence", type: "line", x, y: check.presence, color: "#d62728", dash: true,
        markers: true, tip: at("latent scaling", check.presence) });
      if (!twoModels) marks.push(["latent scaling", check.scaled_snapshot, check.presence, "#d62728"]);
    }
    for (const [name, s, y, color] of marks) {
      if (s === null || s === undefined || y[s] === null) continue;
      series.push({ name: `emergence (${name})`, type: "line", x: [s], y: [y[s]], symbol: "triangle-up", size: 12, color,
        tip: () => `emerges at ${labels[s]} by ${name}` });
    }
    Charts.plot(document.getElementById("plot-emergence"), { panels: [
      { x: snapshotAxis(run), y: { title: "share of its peak", range: [0, 1.08] }, series },
    ] }, shownReading());
    return Promise.resolve();
  },

  link(feature, snapshot) {
    return CL.el("a", { href: `/feature/${feature}` + (snapshot === undefined ? "" : `?snapshot=${snapshot}`), text: `#${feature}` });
  },

  joined(features, snapshot) {
    const out = [];
    features.forEach((f, k) => { if (k) out.push(", "); out.push(this.link(f, snapshot)); });
    return out;
  },

  events(run, events) {
    if (!events.length) return CL.el("p", { class: "note", text: "In no lineage event." });
    return CL.el("ul", { class: "events" }, ...events.map((e) => {
      const step = run.snapshots[e.snapshot].label;
      const how = e.how === "divergence" ? (e.kind === "split" ? "coincide, then part" : "part, then coincide")
        : e.how === "turn" ? "one fades or emerges as another turns"
        : e.how === "composition" ? "the parent turns as latents born beside it fire with it; a child is its row summed with one of theirs"
        : "fade as others emerge";
      // an event read from decoder rows the activations do not hold is listed, marked, and counted nowhere
      const aside = e.held ? [] : [CL.el("span", { class: "note", text: " set aside: the activations do not hold its latents there" })];
      // latents strongest at the first snapshot carry, in an untrained model, single tokens' directions
      const first = run.snapshots[0];
      const early = e.first_snapshot ? [CL.el("span", { class: "note", text: ` its latents are all strongest at ${first.label}`
        + (first.step === 0 ? ", the untrained model, where a latent carries a single token's direction" : "") })] : [];
      // a split by composition's children are sums of rows, each weighted by its latent's mean code there
      const children = e.composed ? [" children: ", ...e.composed.flatMap((child, k) => [k ? "; " : "",
        ...child.flatMap(([latent, weight], j) => [j ? " + " : "", `${CL.fmt(weight, 3)} \u00d7 `, this.link(latent, e.snapshot)])])] : [];
      // a reused latent that comes onto its partner's row as the feature it carried fades reads as a merge too
      const weak = e.held && e.kind === "merge" && !run.emergence.agreement ? [CL.el("span", { class: "note merge-weak",
        text: " a merge is the weakest of the three events: a latent reused after the feature it carried fades also "
          + "ends on its partner's row; crosslens analyze --lineage-against RUN checks it against another crosscoder" })] : [];
      return CL.el("li", { "data-kind": e.kind, "data-held": String(e.held), "data-first": String(e.first_snapshot),
        "data-agreement": e.agreement === null ? "" : String(e.agreement) },
        `${e.kind} at ${step}: `, ...this.joined(e.before, e.snapshot), " \u2192 ", ...this.joined(e.after, e.snapshot),
        ` (${how}, cosine ${CL.fmt(e.cosine, 3)})`, ...children, ...aside, ...early, ...weak, ...this.agreement(run, e));
    }));
  },

  // Whether the crosscoder the lineage was checked against makes this event too.
  agreement(run, e) {
    const checked = run.emergence.agreement;
    if (!checked || !e.held) return [];
    const other = `${this.runName(checked)}'s crosscoder`;
    const text = e.agreement === null ? ` not checked against ${other}: no latent of it is present beside ${run.snapshots[e.snapshot].label}`
      : e.made ? ` made by ${other} too (agreement ${CL.fmt(e.agreement, 3)})`
      : ` not made by ${other} (agreement ${CL.fmt(e.agreement, 3)}, under ${checked.line})`;
    return [CL.el("span", { class: "note agreement", text })];
  },

  relatives(run, relatives) {
    const rows = [];
    relatives.forEach((list, s) => {
      if (!list.length) return;
      const cells = [];
      list.forEach(([f, cosine], k) => {
        if (k) cells.push(" \u00b7 ");
        cells.push(this.link(f, s), CL.el("span", { class: "note", text: ` ${CL.fmt(cosine, 2)}` }));
      });
      rows.push(CL.el("tr", { "data-snapshot": s }, CL.el("td", { class: "when", text: run.snapshots[s].label }), CL.el("td", {}, ...cells)));
    });
    if (!rows.length) return CL.el("p", { class: "note", text: "None stored (it is present at no snapshot)." });
    return CL.el("table", { class: "relatives" }, CL.el("tbody", {}, ...rows));
  },
};
