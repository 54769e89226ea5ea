// Per-day bar charts (the audit log's events, a key's requests) drawn by Chart.js from the
// JSON the page embeds next to each canvas[data-day-chart]. Without this file (or
// Chart.js) the caption still gives the totals and the table below lists the events.
"use strict";

(function () {
  if (typeof window.Chart === "undefined") { return; }
  var style = getComputedStyle(document.body);
  var text = style.getPropertyValue("--pico-color").trim() || "#444";
  var colours = ["rgba(1, 114, 173, 0.75)", "rgba(198, 40, 40, 0.75)"];
  document.querySelectorAll("canvas[data-day-chart]").forEach(function (canvas) {
    var source = document.getElementById(canvas.dataset.dayChart);
    if (!source) { return; }
    var data = JSON.parse(source.textContent);
    var stacked = canvas.hasAttribute("data-stacked");
    canvas.chart = new window.Chart(canvas, {
      type: "bar",
      data: {
        labels: data.labels,
        datasets: data.datasets.map(function (set, i) {
          return { label: set.label, data: set.data, backgroundColor: colours[i % colours.length] };
        })
      },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        interaction: { mode: "index", intersect: false },
        plugins: { legend: { display: data.datasets.length > 1, labels: { color: text } } },
        scales: {
          x: { stacked: stacked, ticks: { color: text, maxRotation: 0, autoSkip: true, autoSkipPadding: 12 } },
          y: { stacked: stacked, beginAtZero: true, ticks: { color: text, precision: 0 } }
        }
      }
    });
    canvas.dataset.drawn = "true";
  });
}());
