// The Usage page's chart: requests (bars) and rows read and exported (lines) per day, from
// the JSON the page embeds. Without this file (or Chart.js) the per-day table still shows it.
"use strict";

(function () {
  var canvas = document.getElementById("usage-chart");
  var source = document.getElementById("usage-chart-data");
  if (!canvas || !source || typeof window.Chart === "undefined") { return; }
  var data = JSON.parse(source.textContent);
  var style = getComputedStyle(document.body);
  var text = style.getPropertyValue("--pico-color").trim() || "#444";
  canvas.chart = new window.Chart(canvas, {
    data: {
      labels: data.labels,
      datasets: [
        { type: "bar", label: "Requests", data: data.requests, yAxisID: "requests", backgroundColor: "rgba(1, 114, 173, 0.6)" },
        { type: "line", label: "Rows read", data: data.rows_read, yAxisID: "rows", borderColor: "#2e7d32", backgroundColor: "#2e7d32", tension: 0.2 },
        { type: "line", label: "Rows exported", data: data.rows_exported, yAxisID: "rows", borderColor: "#c98a00", backgroundColor: "#c98a00", tension: 0.2 }
      ]
    },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      interaction: { mode: "index", intersect: false },
      plugins: { legend: { labels: { color: text } } },
      scales: {
        x: { ticks: { color: text } },
        requests: { type: "linear", position: "left", beginAtZero: true, title: { display: true, text: "Requests", color: text }, ticks: { color: text, precision: 0 } },
        rows: { type: "linear", position: "right", beginAtZero: true, grid: { drawOnChartArea: false }, title: { display: true, text: "Rows", color: text }, ticks: { color: text, precision: 0 } }
      }
    }
  });
  canvas.dataset.drawn = "true";
}());
