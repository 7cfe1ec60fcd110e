// Draws a training run's metric curves with the vendored uPlot (static/vendor/uPlot.iife.min.js). The data are
// the page's JSON block (#metrics-data), rendered by the server; this file only hands them to uPlot.
"use strict";
(function () {
  const block = document.getElementById("metrics-data");
  if (!block || typeof uPlot === "undefined") return;
  const data = JSON.parse(block.textContent);
  const colors = ["#36c", "#d62", "#282", "#a3a", "#c90", "#099", "#b22", "#555"];
  function draw(figure) {
    if (figure.dataset.rendered) return;
    const chart = data.charts[Number(figure.dataset.chart)];
    const series = [{ label: "step" }].concat(chart.keys.map((key, i) => ({
      label: key, stroke: colors[i % colors.length], width: 1.5, spanGaps: true, points: { show: data.steps.length <= 60 },
    })));
    const options = {
      width: 440, height: 240, series: series, scales: { x: { time: false } },
      axes: [{ label: "step" }, { size: 60 }], legend: { live: true },
    };
    new uPlot(options, [data.steps].concat(chart.keys.map((key) => data.series[key])), figure);
    figure.dataset.rendered = String(chart.keys.length);
  }
  document.querySelectorAll("#main-charts figure.metric-chart").forEach(draw);
  // the others are drawn when their section opens: a folded chart would be measured at width 0
  const more = document.getElementById("more-charts");
  if (more) more.addEventListener("toggle", () => more.querySelectorAll("figure.metric-chart").forEach(draw));
})();
