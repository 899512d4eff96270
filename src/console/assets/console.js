// linkgate console: draws each `table[data-chart]` as a uPlot line chart above the table. The
// table stays in the page: it is what a reader without script (or a screen reader) gets, and the
// numbers the chart shows come from it, so the two cannot disagree.
(function () {
  "use strict";
  function draw(table) {
    var xs = [], ys = [];
    table.querySelectorAll("tbody tr").forEach(function (tr) {
      var t = Number(tr.getAttribute("data-t")), v = Number(tr.getAttribute("data-v"));
      if (isFinite(t) && isFinite(v)) { xs.push(t); ys.push(v); }
    });
    if (xs.length < 2 || typeof uPlot === "undefined") { return; }
    var box = document.createElement("div");
    box.className = "chart";
    box.setAttribute("role", "img");
    box.setAttribute("aria-label", table.getAttribute("data-label") || "");
    table.parentNode.parentNode.insertBefore(box, table.parentNode);
    var width = Math.max(280, Math.min(box.clientWidth || 600, 1150));
    new uPlot({
      width: width, height: 220,
      series: [{}, { label: table.getAttribute("data-series") || "", stroke: "#0b5cad", fill: "rgba(11,92,173,0.08)", width: 2 }],
      axes: [{}, { size: 48 }],
      legend: { show: false }
    }, [xs, ys], box);
  }
  function ready() { document.querySelectorAll("table[data-chart]").forEach(draw); }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", ready); } else { ready(); }
})();
