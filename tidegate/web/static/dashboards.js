// Dashboards: draws bar and line widgets with Chart.js from the JSON data block the page
// carries (the server computed the rows for the viewer; nothing is fetched here).
"use strict";

(function () {
  function draw(canvas) {
    var block = document.getElementById(canvas.dataset.chart);
    if (!block || typeof window.Chart === "undefined") { return; }
    var data = JSON.parse(block.textContent);
    new window.Chart(canvas, {
      type: canvas.dataset.chartKind === "line" ? "line" : "bar",
      data: { labels: data.labels, datasets: [{ label: data.label, data: data.values }] },
      options: { responsive: true, maintainAspectRatio: false, animation: false, plugins: { legend: { display: false } } }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("canvas[data-chart]").forEach(draw);
  });
})();
