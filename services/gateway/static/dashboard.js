// Restora's performance dashboard: reads /api/v1/records/summary and draws SVG charts.
// No chart library: three small drawing functions (lines over time, stacked bars over
// time, horizontal bars) are all the page needs, and the gateway serves them offline.
"use strict";

(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const REFRESH_MS = 30_000;
  // Stage order of a job's life; colours stay the same for a stage across charts.
  const STAGES = ["upload", "queue_preprocess", "preprocess", "queue_inference", "load",
    "inference", "encode", "store", "total"];
  const COLORS = {
    upload: "#8e7cc3", queue_preprocess: "#e69138", preprocess: "#6aa84f",
    queue_inference: "#cc4125", load: "#76a5af", inference: "#4f6df5", encode: "#c27ba0",
    store: "#a0a0a0", total: "#5d6475", done: "#1f9d63", failed: "#c8372d",
  };
  const PALETTE = ["#4f6df5", "#e69138", "#1f9d63", "#c27ba0", "#cc4125", "#76a5af"];
  const LABELS = {
    queue_preprocess: "wait for preprocess", queue_inference: "wait for a model service",
    total: "end to end",
  };

  // The operator's admin token comes with the link (`/dashboard?token=…`, as `make run`
  // prints it); every API call of this page sends it as a Bearer header, never in a URL.
  const TOKEN = new URLSearchParams(window.location.search).get("token") || "";
  const AUTH = TOKEN ? { Authorization: `Bearer ${TOKEN}` } : {};

  const $ = (selector) => document.querySelector(selector);
  let latest = null;
  let timer = null;

  // ------------------------------------------------------------------ formatting
  function seconds(value) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    if (value < 1) return `${(value * 1000).toFixed(value < 0.01 ? 1 : 0)} ms`;
    if (value < 120) return `${value.toFixed(value < 10 ? 2 : 1)} s`;
    return `${(value / 60).toFixed(1)} min`;
  }
  const percent = (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(1)} %`);
  const number = (v, digits = 0) => (v === null || v === undefined ? "–" : v.toFixed(digits));

  function timeLabel(epochS, spanS) {
    const d = new Date(epochS * 1000);
    const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    if (spanS <= 86400) return hm;
    return d.toLocaleDateString([], { month: "short", day: "numeric" }) + (spanS <= 3 * 86400 ? ` ${hm}` : "");
  }

  // "Nice" tick values: 1, 2 or 5 times a power of ten.
  function ticks(max, count = 4) {
    if (!(max > 0)) return [0, 1];
    const raw = max / count;
    const power = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
    const out = [];
    for (let v = 0; v <= max + step * 1e-9; v += step) out.push(v);
    if (out[out.length - 1] < max) out.push(out[out.length - 1] + step);
    return out;
  }

  // ------------------------------------------------------------------ drawing
  function el(name, attrs = {}, parent = null) {
    const node = document.createElementNS(SVG_NS, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }

  function frame(figure) {
    const svg = figure.querySelector("svg");
    svg.replaceChildren();
    const width = Math.max(svg.clientWidth || svg.getBoundingClientRect().width || 600, 200);
    const height = svg.clientHeight || 240;
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    const box = { left: 56, right: width - 12, top: 10, bottom: height - 26 };
    return { svg, width, height, box };
  }

  function legend(figure, entries) {
    const box = figure.querySelector(".legend");
    box.replaceChildren(...entries.map(([name, color]) => {
      const span = document.createElement("span");
      span.textContent = name;
      span.style.setProperty("--swatch", color);
      return span;
    }));
  }

  function empty(figure, message = "No finished jobs in this period") {
    const { svg, width, height } = frame(figure);
    el("text", { class: "empty", x: width / 2, y: height / 2, "text-anchor": "middle" }, svg)
      .textContent = message;
    figure.dataset.series = "0";
    legend(figure, []);
  }

  function yAxis(svg, box, max, format) {
    const values = ticks(max);
    const top = values[values.length - 1];
    const y = (v) => box.bottom - (v / top) * (box.bottom - box.top);
    const axis = el("g", { class: "axis" }, svg);
    for (const v of values) {
      el("line", { x1: box.left, x2: box.right, y1: y(v), y2: y(v) }, axis);
      el("text", { x: box.left - 6, y: y(v) + 4, "text-anchor": "end" }, axis).textContent = format(v);
    }
    return y;
  }

  function xAxis(svg, box, from, to) {
    const span = Math.max(to - from, 1);
    const x = (t) => box.left + ((t - from) / span) * (box.right - box.left);
    const axis = el("g", { class: "axis" }, svg);
    const count = Math.max(2, Math.min(6, Math.floor((box.right - box.left) / 110)));
    for (let i = 0; i <= count; i++) {
      const t = from + (span * i) / count;
      el("text", { x: x(t), y: box.bottom + 18, "text-anchor": i === 0 ? "start" : i === count ? "end" : "middle" }, axis)
        .textContent = timeLabel(t, span);
    }
    return x;
  }

  // series: [{name, color, points: [[t, v], ...]}]
  function lineChart(figure, series, from, to, format) {
    series = series.filter((s) => s.points.length);
    if (!series.length) return empty(figure);
    const { svg, box } = frame(figure);
    const max = Math.max(...series.flatMap((s) => s.points.map((p) => p[1])));
    const y = yAxis(svg, box, max, format);
    const x = xAxis(svg, box, from, to);
    for (const s of series) {
      const g = el("g", { "data-name": s.name }, svg);
      const d = s.points.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
      el("path", { class: "series", d, stroke: s.color }, g);
      for (const [t, v] of s.points) {
        const dot = el("circle", { cx: x(t), cy: y(v), r: s.points.length > 40 ? 1.5 : 3, fill: s.color }, g);
        el("title", {}, dot).textContent = `${s.name} · ${timeLabel(t, 0)} · ${format(v)}`;
      }
    }
    figure.dataset.series = String(series.length);
    legend(figure, series.map((s) => [s.name, s.color]));
  }

  // Stacked bars: stacks = [{name, color, values: Map(t → v)}], one bar per bucket.
  function stackedBars(figure, stacks, buckets, bucketS, from, to, format) {
    if (!buckets.length) return empty(figure);
    const { svg, box } = frame(figure);
    const totals = buckets.map((t) => stacks.reduce((sum, s) => sum + (s.values.get(t) || 0), 0));
    const y = yAxis(svg, box, Math.max(...totals), format);
    const x = xAxis(svg, box, from, to);
    const barWidth = Math.max(2, x(from + bucketS) - x(from) - 2);
    const g = el("g", { class: "bars" }, svg);
    buckets.forEach((t) => {
      let base = 0;
      for (const s of stacks) {
        const v = s.values.get(t) || 0;
        if (!v) continue;
        const rect = el("rect", {
          class: "series", x: x(t) + 1, width: barWidth, y: y(base + v), height: y(base) - y(base + v),
          fill: s.color, stroke: "none",
        }, g);
        el("title", {}, rect).textContent = `${s.name} · ${timeLabel(t, 0)} · ${format(v)}`;
        base += v;
      }
    });
    figure.dataset.series = String(stacks.length);
    legend(figure, stacks.map((s) => [s.name, s.color]));
  }

  // Horizontal bars grouped by task: rows = [{group, name, value}].
  function groupedBars(figure, rows, format) {
    rows = rows.filter((r) => r.value !== null && r.value !== undefined);
    if (!rows.length) return empty(figure, "No finished jobs with a known input size");
    const svg = figure.querySelector("svg");
    const rowH = 22;
    const groups = [...new Set(rows.map((r) => r.group))];
    svg.style.height = `${Math.max(120, (rows.length + groups.length) * rowH + 30)}px`;
    const { box } = frame(figure);
    const labelW = 150;
    const max = Math.max(...rows.map((r) => r.value));
    const top = ticks(max)[ticks(max).length - 1];
    const x = (v) => box.left + labelW + (v / top) * (box.right - box.left - labelW - 60);
    const models = [...new Set(rows.map((r) => r.name))];
    const color = (name) => PALETTE[models.indexOf(name) % PALETTE.length];
    const g = el("g", { class: "axis" }, svg);
    let yPos = box.top;
    for (const group of groups) {
      el("text", { x: 0, y: yPos + 14, "font-weight": "700" }, g).textContent = group;
      yPos += rowH;
      for (const r of rows.filter((row) => row.group === group)) {
        el("text", { x: 12, y: yPos + 14 }, g).textContent = r.name;
        const rect = el("rect", {
          class: "series", x: x(0), y: yPos + 3, height: rowH - 7, width: Math.max(1, x(r.value) - x(0)),
          fill: color(r.name), stroke: "none", rx: 3,
        }, svg);
        el("title", {}, rect).textContent = `${group} · ${r.name} · ${format(r.value)}`;
        el("text", { x: x(r.value) + 6, y: yPos + 14 }, g).textContent = format(r.value);
        yPos += rowH;
      }
    }
    figure.dataset.series = String(rows.length);
    legend(figure, models.map((m) => [m, color(m)]));
  }

  // ------------------------------------------------------------------ the page
  function filters() {
    const rangeS = Number($("#range").value);
    const to = Date.now() / 1000;
    const params = new URLSearchParams({ from: String(Math.floor(to - rangeS)), to: String(Math.ceil(to)) });
    if ($("#task").value) params.set("task", $("#task").value);
    return { params, from: to - rangeS, to };
  }

  function stageSeries(rows, keep, pct) {
    const byStage = new Map();
    for (const row of rows) {
      if (!keep(row.stage) || row[pct] === null) continue;
      if (!byStage.has(row.stage)) byStage.set(row.stage, []);
      byStage.get(row.stage).push([row.t, row[pct]]);
    }
    return STAGES.filter((s) => byStage.has(s)).map((s) => ({
      name: LABELS[s] || s, color: COLORS[s], points: byStage.get(s),
    }));
  }

  function fillTable(selector, rows, cells) {
    const body = $(`${selector} tbody`);
    body.replaceChildren(...rows.map((row) => {
      const tr = document.createElement("tr");
      for (const value of cells(row)) {
        const td = document.createElement("td");
        td.textContent = value;
        tr.appendChild(td);
      }
      return tr;
    }));
  }

  function render() {
    if (!latest) return;
    const { summary, from, to } = latest;
    const pct = $("#percentile").value;
    document.querySelectorAll(".pct-name").forEach((n) => { n.textContent = pct; });

    $("#kpi-count").textContent = String(summary.count);
    $("#kpi-throughput").textContent = `${number(summary.throughput_per_min, 2)} /min`;
    $("#kpi-failures").textContent = percent(summary.failure_rate);
    $("#kpi-latency").textContent = seconds(summary.latency[pct]);

    const stageRows = summary.series.stages;
    lineChart($("#chart-latency"), stageSeries(stageRows, (s) => !s.startsWith("queue_"), pct), from, to, seconds);
    lineChart($("#chart-queue"), stageSeries(stageRows, (s) => s.startsWith("queue_"), pct), from, to, seconds);

    const overall = summary.series.overall;
    const perMinute = 60 / summary.bucket_s;
    stackedBars($("#chart-throughput"), [
      { name: "done", color: COLORS.done, values: new Map(overall.map((r) => [r.t, (r.count - r.failed) * perMinute])) },
      { name: "failed", color: COLORS.failed, values: new Map(overall.map((r) => [r.t, r.failed * perMinute])) },
    ], overall.map((r) => r.t), summary.bucket_s, from, to, (v) => number(v, v < 10 ? 2 : 0));
    lineChart($("#chart-failures"), [{
      name: "failed share", color: COLORS.failed, points: overall.map((r) => [r.t, r.failure_rate]),
    }], from, to, percent);

    groupedBars($("#chart-models"), summary.models.map((m) => ({
      group: m.task, name: `${m.model}${m.device ? ` (${m.device})` : ""}`, value: m.inference_s_per_mpix,
    })), seconds);

    fillTable("#tasks-table", summary.tasks, (r) => [r.task, r.count, r.failed, percent(r.failure_rate),
      number(r.throughput_per_min, 2), seconds(r.p50), seconds(r.p95), seconds(r.p99)]);
    fillTable("#models-table", summary.models, (r) => [r.task, r.model, r.device || "–", r.count, r.failed,
      seconds(r.latency_p50), seconds(r.inference_p50), seconds(r.inference_s_per_mpix)]);
    const order = (s) => STAGES.indexOf(s);
    const stageTable = [...summary.stages].sort((a, b) => a.task.localeCompare(b.task) || order(a.stage) - order(b.stage));
    fillTable("#stages-table", stageTable, (r) => [r.task, LABELS[r.stage] || r.stage, r.n,
      seconds(r.p50), seconds(r.p95), seconds(r.p99), seconds(r.mean)]);
  }

  async function load() {
    const { params, from, to } = filters();
    const csv = new URLSearchParams(params);
    csv.set("format", "csv");
    $("#csv-link").href = `/api/v1/records?${csv}`;
    $("#status").textContent = "Loading…";
    try {
      const response = await fetch(`/api/v1/records/summary?${params}`, { headers: AUTH });
      if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
      latest = { summary: await response.json(), from, to };
      render();
      document.body.dataset.loaded = "true";
      $("#status").textContent = `${latest.summary.count} finished jobs · updated ${new Date().toLocaleTimeString()}`;
    } catch (error) {
      $("#status").textContent = `Could not load the records: ${error.message}`;
    }
  }

  // A plain link cannot send the Bearer header: fetch the CSV, then save it from memory.
  async function downloadCsv(event) {
    event.preventDefault();
    const link = event.currentTarget;
    try {
      const response = await fetch(link.href, { headers: AUTH });
      if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
      const url = URL.createObjectURL(await response.blob());
      const save = document.createElement("a");
      save.href = url;
      save.download = "restora-records.csv";
      document.body.append(save);
      save.click();
      save.remove();
      setTimeout(() => URL.revokeObjectURL(url), 1000);
    } catch (error) {
      $("#status").textContent = `Could not download the records: ${error.message}`;
    }
  }

  function schedule() {
    clearInterval(timer);
    if ($("#auto-refresh").checked) timer = setInterval(load, REFRESH_MS);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("#filters").addEventListener("submit", (event) => { event.preventDefault(); load(); });
    $("#csv-link").addEventListener("click", downloadCsv);
    for (const link of document.querySelectorAll("a[href='/dashboard']")) link.search = window.location.search;
    $("#range").addEventListener("change", load);
    $("#task").addEventListener("change", load);
    $("#percentile").addEventListener("change", render);
    $("#auto-refresh").addEventListener("change", schedule);
    let resizing = null;
    window.addEventListener("resize", () => { clearTimeout(resizing); resizing = setTimeout(render, 150); });
    load();
    schedule();
  });
})();
