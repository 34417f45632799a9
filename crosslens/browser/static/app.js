// The browser's two views, the feature list (/) and a feature (/feature/ID), in one page:
// moving between them keeps the list as it was left (filters, scroll).
"use strict";

function parseRoute(url) {
  const match = url.pathname.match(/^\/feature\/(\d+)\/?$/);
  return match ? { view: "feature", feature: Number(match[1]), snapshot: url.searchParams.get("snapshot") } : { view: "list" };
}

const scrolled = { list: 0, feature: 0 };
let currentView = null;

async function route(early) {
  const target = parseRoute(new URL(window.location.href));
  if (currentView) scrolled[currentView] = window.scrollY;
  document.getElementById("list-view").hidden = target.view !== "list";
  document.getElementById("feature-view").hidden = target.view !== "feature";
  document.querySelector("header.bar a.features-link").classList.toggle("here", target.view === "list");
  document.body.dataset.view = target.view;
  currentView = target.view;
  if (target.view === "list") {
    await ListView.show(early);
    window.scrollTo(0, scrolled.list);
  } else {
    window.scrollTo(0, 0);
    await showFeature(target.feature, target.snapshot);
  }
}

CL.navigate = function (href) {
  CL.routeStart = performance.now();
  window.history.pushState(null, "", href);
  route();
};

// Links to a view are followed in the page; anything else (the report, a new tab) as usual.
document.addEventListener("click", (event) => {
  if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const link = event.target.closest ? event.target.closest("a[href]") : null;
  if (!link || link.target) return;
  const url = new URL(link.href, window.location.href);
  if (url.origin !== window.location.origin || !(url.pathname === "/" || /^\/feature\/\d+\/?$/.test(url.pathname))) return;
  event.preventDefault();
  CL.navigate(url.pathname + url.search);
});

window.addEventListener("popstate", () => {
  CL.routeStart = performance.now();
  route();
});

async function main() {
  window.history.scrollRestoration = "manual";
  CL.installTooltip();
  CL.installGoto();
  // a page load asks for its data at once, beside the run's facts
  const first = parseRoute(new URL(window.location.href));
  let early = null;
  if (first.view === "list") {
    early = CL.fetchJSON("/api/features" + window.location.search);
    early.catch(() => {});
  } else {
    requestFeature(first.feature, first.snapshot);
  }
  await CL.loadRun();
  await route(early);
}

main().catch((error) => {
  document.body.replaceChildren(CL.el("div", { class: "empty error", text: error.message }));
  document.body.dataset.state = "ready";
});
