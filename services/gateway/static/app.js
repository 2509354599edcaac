// Restora's page: upload, pick a fix, paint a mask, follow the job, compare, download.
// Plain browser JavaScript (no build step, no external assets); talks only to /api/v1.
// Each job is private to this browser: the owner token from the 202 answer is kept with the
// job in the recent-jobs list (localStorage) and sent as `Authorization: Bearer` on every call.
"use strict";

(() => {
  const API = "/api/v1";
  const RECENT_KEY = "restora.recentJobs";
  const RECENT_MAX = 12;
  const FINAL_STATES = new Set(["done", "failed", "cancelled"]);
  const STAGES = ["queued", "preprocessing", "running", "done"];
  // Results above this many pixels are shown from the preview rendition when the API offers one:
  // a 64-megapixel PNG decoded into the page costs far more memory than it shows on a screen.
  const HUGE_PIXELS = 24e6;
  const TASK_LABELS = {
    denoise: "Remove noise",
    artifacts: "Remove JPEG artifacts",
    superres: "Upscale 4×",
    inpaint: "Fill in a region",
    auto: "Fix everything (auto)",
    "artifacts,denoise": "JPEG + noise",
  };
  const BATCH_KEY = "restora.batch";
  // What task=auto may pick from (shared/ml/auto.py): the model choices offered for it.
  const AUTO_STEPS = ["artifacts", "denoise", "superres"];
  const BATCH_STATE_TEXT = {
    waiting: "Waiting to upload",
    uploading: "Uploading…",
    queued: "Queued",
    preprocessing: "Preparing",
    running: "Restoring…",
    done: "Done",
    failed: "Failed",
    cancelled: "Cancelled",
    refused: "Not accepted",
    gone: "Files expired",
  };
  const MODEL_LABELS = {
    mwcnn: "MWCNN network",
    realesrgan: "Real-ESRGAN network",
    esrgan: "ESRGAN network",
    deepfill: "DeepFill network",
    dip: "Deep image prior (slow)",
    classic: "Classic",
  };
  const MODEL_NOTES = {
    mwcnn: "MWCNN network: the sharpest results.",
    realesrgan: "Real-ESRGAN network: cleans and sharpens real photos.",
    esrgan: "ESRGAN network: the faithful upscale, recovers fine texture.",
    deepfill: "DeepFill network: fills from the surrounding context.",
    dip: "Deep image prior: a network fitted to this photo alone; takes minutes.",
    classic: "Classic method: fast, no neural network.",
  };
  const STATE_TEXT = {
    queued: "Waiting in the queue…",
    preprocessing: "Checking and preparing the photo…",
    running: "Restoring…",
    done: "Done.",
    failed: "The job failed.",
    cancelled: "The job was cancelled.",
  };

  const $ = (id) => document.getElementById(id);
  const el = {
    dropzone: $("dropzone"), dropEmpty: $("dropzone-empty"), dropOverlay: $("drop-overlay"),
    fileInput: $("file-input"), cameraInput: $("camera-input"),
    preview: $("preview"), previewImg: $("preview-img"), previewFrame: $("preview-frame"),
    fileInfo: $("file-info"), fileList: $("file-list"), changePhoto: $("change-photo"),
    mask: $("mask-canvas"), maskTools: $("mask-tools"), maskHint: $("mask-hint"),
    brushSize: $("brush-size"), brushSizeOut: $("brush-size-out"),
    undo: $("mask-undo"), clear: $("mask-clear"),
    form: $("job-form"), model: $("model"), modelDesc: $("model-desc"), format: $("format"),
    ensemble: $("ensemble"), ensembleRow: $("ensemble-row"),
    strength: $("strength"), strengthRow: $("strength-row"), strengthOut: $("strength-out"),
    sigma: $("sigma"), sigmaAuto: $("sigma-auto"), sigmaOut: $("sigma-out"),
    quality: $("quality"), qualityAuto: $("quality-auto"), qualityOut: $("quality-out"),
    submit: $("submit"), submitHint: $("submit-hint"), formError: $("form-error"),
    jobCard: $("job-card"), elapsed: $("elapsed"), stages: $("stages"),
    progress: $("job-progress"), jobStatus: $("job-status"), jobError: $("job-error"),
    cancel: $("cancel"),
    resultCard: $("result-card"), resultInfo: $("result-info"), viewer: $("viewer"),
    stage: $("stage"), before: $("before-img"), after: $("after-img"), divider: $("divider"),
    compare: $("compare"), zoomIn: $("zoom-in"), zoomOut: $("zoom-out"), zoomFit: $("zoom-fit"),
    zoom100: $("zoom-100"), zoomLevel: $("zoom-level"),
    download: $("download"), openResult: $("open-result"), again: $("again"),
    batchCard: $("batch-card"), batchCounts: $("batch-counts"), batchStatus: $("batch-status"),
    batchGrid: $("batch-grid"), batchDownload: $("batch-download"), batchForget: $("batch-forget"),
    recentList: $("recent-list"), recentEmpty: $("recent-empty"), recentClear: $("recent-clear"),
  };

  const state = {
    catalog: null,
    file: null,
    files: [], // several photos chosen at once: they go as a batch
    fileUrls: [],
    batch: null, // {id, token, task, items: [...], uploading, finished}
    batchTimer: 0,
    image: null, // {url, width, height, format, decoded}
    strokes: [],
    stroke: null,
    job: null,
    events: null,
    pollTimer: 0,
    tickTimer: 0,
    recentDocs: new Map(),
    maxSide: 0, // set when the server said the photo costs too much and the user shrank it
    retryAt: 0, // the server is busy: submitting waits until then (ms since the epoch)
    retryTimer: 0,
    tokens: new Map(), // job id -> owner token, for when localStorage cannot keep it
  };

  // ------------------------------------------------------------------ small helpers
  function formatBytes(n) {
    if (n == null) return "";
    const units = ["bytes", "KB", "MB", "GB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
    return `${i === 0 ? n : n.toFixed(n < 10 ? 1 : 0)} ${units[i]}`;
  }

  function dims(w, h) { return `${w} × ${h}`; }

  // Sub-second steps are common with the classic models: they get two decimals, not "0.0 s".
  function seconds(s) { return `${s.toFixed(s < 1 ? 2 : 1)} s`; }

  function sentence(text) {
    const t = String(text || "").trim();
    if (!t) return "";
    const s = t[0].toUpperCase() + t.slice(1);
    return /[.!?]$/.test(s) ? s : `${s}.`;
  }

  function scrollBehavior() {
    return matchMedia("(prefers-reduced-motion: reduce)").matches ? "auto" : "smooth";
  }

  function selectedTask() { return el.form.elements.task.value; }

  async function readBody(response) {
    const text = await response.text();
    try { return JSON.parse(text); } catch { return { error: text.trim() || response.statusText }; }
  }

  function ownerHeaders(id) {
    const token = state.tokens.get(id) || loadRecent().find((j) => j.id === id)?.token;
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  async function getJob(id) {
    const response = await fetch(`${API}/jobs/${encodeURIComponent(id)}`,
      { cache: "no-store", headers: ownerHeaders(id) });
    if (response.status === 404) return null;
    if (!response.ok) throw new Error((await readBody(response)).error);
    return response.json();
  }

  function showAlert(box, title, detail) {
    box.replaceChildren();
    const strong = document.createElement("strong");
    strong.textContent = title;
    box.append(strong);
    if (detail) {
      const span = document.createElement("span");
      span.className = "alert-detail";
      span.textContent = sentence(detail);
      box.append(span);
    }
    box.hidden = false;
  }

  // ------------------------------------------------------------------ catalog (models, ranges)
  async function loadCatalog() {
    try {
      const response = await fetch(`${API}/models`);
      state.catalog = await response.json();
    } catch {
      state.catalog = null;
    }
    const cat = state.catalog;
    if (cat) {
      setRange(el.sigma, cat.sigma_range);
      setRange(el.quality, cat.quality_range);
      if (Array.isArray(cat.formats)) {
        for (const option of [...el.format.options]) option.hidden = !cat.formats.includes(option.value);
      }
    }
    onTaskChange();
  }

  function setRange(input, range) {
    if (!Array.isArray(range) || range.length !== 2) return;
    input.min = String(Math.max(range[0], input === el.sigma ? 1 : range[0]));
    input.max = String(range[1]);
    input.dispatchEvent(new Event("input"));
  }

  function stepsOf(task) {
    return task === "auto" ? AUTO_STEPS : task.split(",");
  }

  // A chain (or auto) takes one model name for every step that has it; the default is each
  // step's best model.
  function fillChainModels(task) {
    const names = [];
    for (const step of stepsOf(task)) {
      for (const { name } of state.catalog?.tasks?.[step]?.models || []) {
        if (!names.includes(name)) names.push(name);
      }
    }
    el.model.replaceChildren(new Option("Best for each step (default)", ""));
    for (const name of names) el.model.append(new Option(MODEL_LABELS[name] || name, name));
    el.model.value = "";
    describeModel();
  }

  function fillModels(task) {
    if (stepsOf(task).length > 1) {
      fillChainModels(task);
      return;
    }
    const entry = state.catalog?.tasks?.[task];
    const models = entry?.models || [];
    el.model.replaceChildren();
    if (!models.length) {
      el.model.append(new Option("Default", ""));
    }
    for (const { name } of models) {
      const label = MODEL_LABELS[name] || name;
      const isDefault = name === entry.default && models.length > 1;
      el.model.append(new Option(isDefault ? `${label} (default)` : label, name));
    }
    if (entry?.default) el.model.value = entry.default;
    describeModel();
  }

  function describeModel() {
    const task = selectedTask();
    const fromApi = state.catalog?.tasks?.[task]?.models?.find((m) => m.name === el.model.value);
    el.modelDesc.textContent = MODEL_NOTES[el.model.value] || fromApi?.description || "";
    // Only networks that offer it get the choice (the gateway refuses it for the others).
    el.ensembleRow.hidden = !fromApi?.ensemble;
    if (el.ensembleRow.hidden) el.ensemble.checked = false;
    el.strengthRow.hidden = !fromApi?.strength;  // only where GAN weights are installed
  }

  // ------------------------------------------------------------------ task picker and options
  function onTaskChange() {
    const task = selectedTask();
    for (const option of el.form.querySelectorAll(".option")) option.hidden = option.dataset.for !== task;
    fillModels(task);
    updatePainting();
    updateSubmit();
  }

  function bindAutoRange(checkbox, range, output) {
    const sync = () => {
      range.disabled = checkbox.checked;
      output.textContent = checkbox.checked ? "auto" : range.value;
    };
    checkbox.addEventListener("change", sync);
    range.addEventListener("input", sync);
    sync();
  }

  // ------------------------------------------------------------------ choosing a photo
  async function sniffFormat(file) {
    const b = new Uint8Array(await file.slice(0, 16).arrayBuffer());
    const ascii = (from, to) => String.fromCharCode(...b.slice(from, to));
    if (b[0] === 0x89 && ascii(1, 4) === "PNG") return "PNG";
    if (b[0] === 0xff && b[1] === 0xd8) return "JPEG";
    if (ascii(0, 4) === "RIFF" && ascii(8, 12) === "WEBP") return "WebP";
    if (ascii(0, 3) === "GIF") return "GIF";
    if (ascii(0, 2) === "BM") return "BMP";
    if (ascii(0, 4) === "II*\0" || ascii(0, 4) === "MM\0*") return "TIFF";
    if (ascii(4, 8) === "ftyp") return "HEIF/AVIF";
    if (file.type.startsWith("image/")) return file.type.slice(6).toUpperCase();
    return file.type ? `${file.type} file` : "unknown type";
  }

  function loadFiles(files) {
    if (files.length > 1) loadMany(files);
    else loadFile(files[0]);
  }

  // Several photos: a strip of thumbnails instead of the preview; the fix applies to all.
  function loadMany(files) {
    if (state.image?.url) URL.revokeObjectURL(state.image.url);
    state.file = null;
    state.image = null;
    state.files = files;
    state.fileUrls = files.map((file) => URL.createObjectURL(file));
    state.maxSide = 0;
    el.formError.hidden = true;
    el.previewImg.removeAttribute("src");
    el.previewFrame.hidden = true;
    $("no-preview").hidden = true;
    el.fileList.replaceChildren(...files.map((file, i) => {
      const li = document.createElement("li");
      const img = document.createElement("img");
      img.src = state.fileUrls[i];
      img.alt = "";
      img.addEventListener("error", () => img.remove(), { once: true });
      const name = document.createElement("span");
      name.textContent = file.name || `photo ${i + 1}`;
      li.append(img, name);
      return li;
    }));
    el.fileList.hidden = false;
    el.dropEmpty.hidden = true;
    el.preview.hidden = false;
    el.dropzone.dataset.empty = "false";
    const total = files.reduce((sum, f) => sum + f.size, 0);
    el.fileInfo.textContent = `${files.length} photos · ${formatBytes(total)} in all`;
    el.changePhoto.textContent = "Change photos";
    resetMask();
    updatePainting();
    updateSubmit();
  }

  async function loadFile(file) {
    if (!file) return;
    if (state.image?.url) URL.revokeObjectURL(state.image.url);
    const url = URL.createObjectURL(file);
    state.file = file;
    state.files = [file];
    el.fileList.hidden = true;
    el.fileList.replaceChildren();
    el.changePhoto.textContent = "Change photo";
    state.maxSide = 0;
    state.image = { url, width: 0, height: 0, format: await sniffFormat(file), decoded: false };
    el.formError.hidden = true;
    el.previewImg.src = url;
    try {
      await el.previewImg.decode();
      state.image.width = el.previewImg.naturalWidth;
      state.image.height = el.previewImg.naturalHeight;
      state.image.decoded = true;
    } catch {
      el.previewImg.removeAttribute("src");
    }
    el.previewFrame.hidden = !state.image.decoded;
    $("no-preview").hidden = state.image.decoded;
    el.dropEmpty.hidden = true;
    el.preview.hidden = false;
    el.dropzone.dataset.empty = "false";
    sizePreview();
    resetMask();
    describeFile();
    updatePainting();
    updateSubmit();
  }

  // Fit the photo to the box, scaling small ones up (at most 4×) so a finger can paint on them.
  function sizePreview() {
    const img = state.image;
    if (!img?.decoded) return;
    const box = el.dropzone.clientWidth - 24;
    const maxH = Math.max(240, window.innerHeight * 0.62);
    const scale = Math.min(box / img.width, maxH / img.height, 4);
    el.previewImg.style.width = `${Math.floor(img.width * scale)}px`;
    el.previewImg.style.height = `${Math.floor(img.height * scale)}px`;
  }

  function describeFile() {
    const { file, image } = state;
    const parts = [file.name || "pasted image"];
    if (image.decoded) parts.push(`${dims(image.width, image.height)} px`);
    parts.push(image.format, formatBytes(file.size));
    el.fileInfo.textContent = parts.join(" · ");
    if (!image.decoded) {
      el.fileInfo.textContent += " — this browser cannot show it; the server will check whether it can read it.";
    }
  }

  function bindFileInputs() {
    for (const input of [el.fileInput, el.cameraInput]) {
      input.addEventListener("change", () => {
        loadFiles([...input.files]);
        input.value = ""; // choosing the same file again still fires `change`
      });
    }
    document.addEventListener("paste", (event) => {
      const files = [...(event.clipboardData?.files || [])];
      const images = files.filter((f) => f.type.startsWith("image/"));
      if (files.length) {
        event.preventDefault();
        loadFiles(images.length ? images : files.slice(0, 1));
      }
    });
    bindDragAndDrop();
  }

  function bindDragAndDrop() {
    let depth = 0;
    const hasFiles = (event) => [...(event.dataTransfer?.types || [])].includes("Files");
    window.addEventListener("dragenter", (event) => {
      if (!hasFiles(event)) return;
      depth += 1;
      el.dropOverlay.hidden = false;
      el.dropzone.classList.add("dragging");
    });
    window.addEventListener("dragleave", () => {
      depth = Math.max(0, depth - 1);
      if (depth === 0) hideDrop();
    });
    window.addEventListener("dragover", (event) => {
      if (hasFiles(event)) event.preventDefault();
    });
    window.addEventListener("drop", (event) => {
      if (!hasFiles(event)) return;
      event.preventDefault();
      depth = 0;
      hideDrop();
      const files = [...event.dataTransfer.files];
      if (files.length) loadFiles(files);
    });
    function hideDrop() {
      el.dropOverlay.hidden = true;
      el.dropzone.classList.remove("dragging");
    }
  }

  // ------------------------------------------------------------------ inpaint mask painting
  // The mask canvas has the photo's own resolution and is stretched over the preview by CSS,
  // so strokes are stored in image pixels and the upload needs no resampling.
  function resetMask() {
    const { width, height } = state.image || { width: 0, height: 0 };
    el.mask.width = Math.max(1, width);
    el.mask.height = Math.max(1, height);
    state.strokes = [];
    state.stroke = null;
    redrawMask();
  }

  function updatePainting() {
    const on = selectedTask() === "inpaint" && !!state.image?.decoded;
    el.dropzone.classList.toggle("painting", on);
    el.maskTools.hidden = selectedTask() !== "inpaint" || !state.image;
    el.maskHint.textContent = state.image?.decoded
      ? "Paint over what should be filled in (mouse, pen or finger)."
      : "This browser cannot show the photo, so the mask cannot be painted here.";
  }

  function imageScale() {
    const rect = el.mask.getBoundingClientRect();
    return rect.width ? el.mask.width / rect.width : 1;
  }

  function toImagePoint(event) {
    const rect = el.mask.getBoundingClientRect();
    const s = el.mask.width / rect.width;
    return [(event.clientX - rect.left) * s, (event.clientY - rect.top) * s];
  }

  function maskContext() {
    const ctx = el.mask.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.strokeStyle = ctx.fillStyle = "#ff2d55";
    return ctx;
  }

  function drawSegment(ctx, stroke, from, to) {
    ctx.globalCompositeOperation = stroke.erase ? "destination-out" : "source-over";
    ctx.lineWidth = stroke.size;
    ctx.beginPath();
    if (from === to) {
      ctx.arc(to[0], to[1], stroke.size / 2, 0, Math.PI * 2);
      ctx.fill();
    } else {
      ctx.moveTo(from[0], from[1]);
      ctx.lineTo(to[0], to[1]);
      ctx.stroke();
    }
  }

  function drawStroke(ctx, stroke) {
    stroke.points.forEach((p, i) => drawSegment(ctx, stroke, stroke.points[i - 1] || p, p));
  }

  function redrawMask() {
    const ctx = maskContext();
    ctx.globalCompositeOperation = "source-over";
    ctx.clearRect(0, 0, el.mask.width, el.mask.height);
    for (const stroke of state.strokes) drawStroke(ctx, stroke);
    el.undo.disabled = state.strokes.length === 0;
    el.clear.disabled = state.strokes.length === 0;
    updateSubmit();
  }

  function bindMaskPainting() {
    el.mask.addEventListener("pointerdown", (event) => {
      if (event.pointerType === "mouse" && event.button !== 0) return;
      if (state.stroke) return; // a second finger does not start a second stroke
      event.preventDefault();
      el.mask.setPointerCapture(event.pointerId);
      const erase = document.querySelector("input[name=brush-mode]:checked").value === "erase";
      const point = toImagePoint(event);
      state.stroke = {
        pointerId: event.pointerId, erase,
        size: Number(el.brushSize.value) * imageScale(), points: [point],
      };
      drawSegment(maskContext(), state.stroke, point, point);
    });
    el.mask.addEventListener("pointermove", (event) => {
      const stroke = state.stroke;
      if (!stroke || event.pointerId !== stroke.pointerId) return;
      const ctx = maskContext();
      const moves = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
      for (const move of moves.length ? moves : [event]) {
        const point = toImagePoint(move);
        drawSegment(ctx, stroke, stroke.points[stroke.points.length - 1], point);
        stroke.points.push(point);
      }
    });
    const finish = (event) => {
      if (!state.stroke || event.pointerId !== state.stroke.pointerId) return;
      state.strokes.push(state.stroke);
      state.stroke = null;
      redrawMask();
    };
    el.mask.addEventListener("pointerup", finish);
    el.mask.addEventListener("pointercancel", finish);
    el.undo.addEventListener("click", () => { state.strokes.pop(); redrawMask(); });
    el.clear.addEventListener("click", () => { state.strokes = []; redrawMask(); });
    el.brushSize.addEventListener("input", () => { el.brushSizeOut.textContent = `${el.brushSize.value} px`; });
  }

  // The server wants a binary mask (white = fill). Canvas strokes are antialiased, so the
  // alpha channel is thresholded here rather than trusting the edge pixels to be 0 or 255.
  async function exportMask() {
    const { width, height } = el.mask;
    const out = document.createElement("canvas");
    out.width = width;
    out.height = height;
    const ctx = out.getContext("2d", { willReadFrequently: true });
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(el.mask, 0, 0);
    const data = ctx.getImageData(0, 0, width, height);
    const px = data.data;
    let painted = 0;
    for (let i = 0; i < px.length; i += 4) {
      const on = px[i + 3] >= 128;
      const v = on ? 255 : 0;
      px[i] = v; px[i + 1] = v; px[i + 2] = v; px[i + 3] = 255;
      painted += on;
    }
    ctx.putImageData(data, 0, 0);
    const blob = await new Promise((resolve) => out.toBlob(resolve, "image/png"));
    return { blob, painted };
  }

  // ------------------------------------------------------------------ submitting
  function updateSubmit() {
    let hint = "";
    const wait = Math.ceil((state.retryAt - Date.now()) / 1000);
    const many = state.files.length > 1;
    if (!state.file && !many) hint = "Choose a photo first.";
    else if (many && selectedTask() === "inpaint") hint = "Fill in a region works on one photo at a time.";
    else if (!many && selectedTask() === "inpaint" && state.image?.decoded && !state.strokes.some((s) => !s.erase)) {
      hint = "Paint the region to fill in.";
    } else if (wait > 0) hint = `Restora is busy: try again in ${wait} s.`;
    const running = many ? !!state.batch?.uploading : !!(state.job && !state.job.final);
    el.submit.disabled = !!hint || running;
    el.submit.textContent = many ? `Restore ${state.files.length} photos` : "Restore";
    if (running) el.submitHint.textContent = many ? "Sending the photos…" : "A job is running…";
    else el.submitHint.textContent = hint;
  }

  function buildForm(task, file = state.file) {
    const form = new FormData();
    form.append("image", file, file.name || "photo");
    form.append("task", task);
    if (el.model.value) form.append("model", el.model.value);
    form.append("format", el.format.value);
    if (el.ensemble.checked && !el.ensembleRow.hidden) form.append("ensemble", "true");
    if (task === "denoise") form.append("sigma", el.sigmaAuto.checked ? "auto" : el.sigma.value);
    if (task === "artifacts") form.append("quality", el.qualityAuto.checked ? "auto" : el.quality.value);
    if (task === "superres") form.append("scale", "4");
    if (task === "superres" && !el.strengthRow.hidden) form.append("strength", el.strength.value);
    if (state.maxSide) form.append("max_side", String(state.maxSide));
    return form;
  }

  // XMLHttpRequest rather than fetch: it reports upload progress, which matters on phones.
  function postForm(form, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", `${API}/jobs`);
      xhr.upload.addEventListener("progress", (e) => e.lengthComputable && onProgress(e.loaded / e.total));
      xhr.addEventListener("load", () => {
        let body;
        try { body = JSON.parse(xhr.responseText); } catch { body = { error: xhr.responseText || xhr.statusText }; }
        resolve({ status: xhr.status, body, retryAfter: xhr.getResponseHeader("Retry-After") });
      });
      xhr.addEventListener("error", () => reject(new Error("the server could not be reached")));
      xhr.send(form);
    });
  }

  // ------------------------------------------------------------------ push-back
  // 503/429: too much work is waiting (or this user has too many jobs): say so, and keep the
  // button off until the Retry-After the server gave.
  function retrySeconds(answer) {
    const header = Number.parseInt(answer.retryAfter || "", 10);
    const fromBody = Number.parseInt(answer.body.retry_after_s, 10);
    return [header, fromBody].find((n) => Number.isFinite(n) && n > 0) || 5;
  }

  function showBusy(answer) {
    const seconds = retrySeconds(answer);
    const title = answer.status === 429 ? "You have too many jobs running." : "Restora is busy right now.";
    const detail = String(answer.body.error || "too much work is waiting").replace(/^restora is busy:\s*/i, "");
    showAlert(el.formError, title, detail);
    state.retryAt = Date.now() + seconds * 1000;
    clearInterval(state.retryTimer);
    state.retryTimer = setInterval(() => {
      if (Date.now() >= state.retryAt) {
        clearInterval(state.retryTimer);
        state.retryAt = 0;
      }
      updateSubmit();
    }, 1000);
    updateSubmit();
  }

  // 413 for the job's cost: what it would cost, what is allowed, and a button that sends the
  // photo again shrunk to the largest size that fits (the server's max_side).
  function showTooCostly(body) {
    const parts = [];
    if (body.cost != null && body.max_cost != null) {
      parts.push(`it would take about ${Math.round(body.cost)} work units; this server allows ${body.max_cost} per job`);
    }
    if (body.max_side) parts.push(`shrunk to ${body.max_side} px on its long side it fits`);
    else if (body.iterations) parts.push(`with at most ${body.iterations} iterations it fits`);
    else parts.push("pick a smaller photo or a faster model");
    showAlert(el.formError, "This photo is too much work for one job.", parts.length > 1 ? parts.join("; ") : body.error);
    if (!body.max_side) return;
    const shrink = document.createElement("button");
    shrink.type = "button";
    shrink.className = "button alert-action";
    shrink.id = "shrink-and-restore";
    shrink.textContent = `Shrink to ${body.max_side} px and restore`;
    shrink.addEventListener("click", () => {
      state.maxSide = body.max_side;
      submitJob();
    });
    el.formError.append(shrink);
  }

  async function onSubmit(event) {
    event.preventDefault();
    if (state.files.length > 1) await submitBatch();
    else await submitJob();
  }

  async function submitJob() {
    if (!state.file || el.submit.disabled) return;
    el.formError.hidden = true;
    const task = selectedTask();
    const form = buildForm(task);
    if (task === "inpaint") {
      if (!state.image.decoded) {
        showAlert(el.formError, "This photo cannot be masked here.", "the browser could not decode it");
        return;
      }
      const { blob, painted } = await exportMask();
      if (!painted) {
        showAlert(el.formError, "Nothing to fill in.", "paint over the region to fill first");
        return;
      }
      form.append("mask", blob, "mask.png");
    }
    el.submit.disabled = true;
    el.submitHint.textContent = "Uploading…";
    let answer;
    try {
      answer = await postForm(form, (f) => { el.submitHint.textContent = `Uploading… ${Math.round(f * 100)}%`; });
    } catch (err) {
      showAlert(el.formError, "The upload did not go through.", err.message);
      updateSubmit();
      return;
    }
    if (answer.status === 503 || answer.status === 429) {
      showBusy(answer);
      updateSubmit();
      return;
    }
    if (answer.status === 413 && answer.body.limit === "job cost") {
      showTooCostly(answer.body);
      updateSubmit();
      return;
    }
    if (answer.status !== 202 && answer.status !== 200) {
      showAlert(el.formError, "Restora did not accept this upload.",
        answer.body.error || `the server answered HTTP ${answer.status} without a reason`);
      updateSubmit();
      return;
    }
    const { id, owner_token: token, events_url: eventsUrl } = answer.body;
    state.tokens.set(id, token);
    addRecent({ id, token, task, name: state.file.name || "pasted image", created: Date.now(), state: "queued" });
    watchJob(id, task, state.image.url, eventsUrl);
  }

  // ------------------------------------------------------------------ following a job
  function watchJob(id, task, localUrl, eventsUrl) {
    stopWatching();
    state.job = { id, task, localUrl, t0: performance.now(), times: {}, final: false, state: "queued" };
    el.jobCard.hidden = false;
    el.resultCard.hidden = true;
    el.jobError.hidden = true;
    el.cancel.hidden = false;
    el.cancel.disabled = false;
    el.progress.hidden = true;
    renderStages("queued", {});
    el.jobStatus.textContent = STATE_TEXT.queued;
    state.tickTimer = setInterval(tick, 100);
    updateSubmit();
    el.jobCard.scrollIntoView({ behavior: scrollBehavior(), block: "nearest" });
    subscribe(id, eventsUrl);
  }

  function stopWatching() {
    state.events?.close();
    state.events = null;
    clearInterval(state.tickTimer);
    clearTimeout(state.pollTimer);
  }

  function tick() {
    if (!state.job) return;
    el.elapsed.textContent = seconds((performance.now() - state.job.t0) / 1000);
  }

  // EventSource cannot send an Authorization header. Rather than a cookie (sent with every
  // request to its path, so the API would need CSRF defences as well), the API hands out
  // `events_url` with a short-lived token signed for this one job's events: it opens nothing
  // else, and a log that records the URL records a key that expires in minutes. A reconnect
  // after it expired is refused, and the page then polls with its Bearer token instead.
  function subscribe(id, eventsUrl) {
    const source = new EventSource(eventsUrl || `${API}/jobs/${encodeURIComponent(id)}/events`);
    state.events = source;
    source.addEventListener("status", (event) => onStatus(JSON.parse(event.data)));
    source.addEventListener("error", () => {
      // The stream ends after a final state; otherwise EventSource retries on its own, and
      // only a closed source (e.g. a proxy that refuses SSE) falls back to polling.
      if (state.job?.final) source.close();
      else if (source.readyState === EventSource.CLOSED) poll(id);
    });
  }

  async function poll(id) {
    if (!state.job || state.job.id !== id || state.job.final) return;
    try {
      const doc = await getJob(id);
      if (doc) onStatus({ state: doc.state, progress: doc.progress, error: doc.error, at: doc.updated_at });
    } catch { /* a missed poll is retried below */ }
    if (state.job && !state.job.final) state.pollTimer = setTimeout(() => poll(id), 1000);
  }

  function onStatus(status) {
    const job = state.job;
    if (!job || job.final) return;
    job.state = status.state;
    if (status.at && !(status.state in job.times)) job.times[status.state] = status.at;
    if (!("queued" in job.times) && !job.askedStages) fillEarlierStages(job);
    renderStages(status.state, job.times);
    const showBar = status.progress != null && !FINAL_STATES.has(status.state);
    el.progress.hidden = !showBar;
    if (showBar) el.progress.value = status.progress;
    let text = STATE_TEXT[status.state] || status.state;
    if (status.state === "running" && status.progress != null) text = `Restoring… ${Math.round(status.progress * 100)}%`;
    el.jobStatus.textContent = text;
    updateRecent(job.id, { state: status.state });
    if (FINAL_STATES.has(status.state)) finishJob(job, status);
  }

  // A stream opened after the job moved on starts at its current state; the job document
  // has the times of the stages before it.
  async function fillEarlierStages(job) {
    job.askedStages = true;
    const doc = await getJob(job.id).catch(() => null);
    if (!doc?.stages || job !== state.job) return;
    job.times = { ...doc.stages, ...job.times };
    renderStages(job.state, job.times);
  }

  function renderStages(current, times) {
    const failed = current === "failed" || current === "cancelled";
    const reachedRank = failed
      ? Math.max(-1, ...STAGES.map((s, i) => (s in times ? i : -1)))
      : STAGES.indexOf(current);
    const origin = times.queued;
    STAGES.forEach((name, i) => {
      const li = el.stages.children[i];
      const reached = i <= reachedRank;
      li.classList.toggle("reached", reached);
      li.classList.toggle("active", !failed && name === current && current !== "done");
      li.classList.toggle("failed", failed && i === STAGES.length - 1);
      const label = li.querySelector(".stage-name");
      if (i === STAGES.length - 1) label.textContent = failed ? (current === "failed" ? "Failed" : "Cancelled") : "Done";
      const at = times[name] ?? (failed && i === STAGES.length - 1 ? times[current] : undefined);
      li.querySelector(".stage-time").textContent =
        at != null && origin != null ? `+${seconds(Math.max(0, at - origin))}` : "";
      li.setAttribute("aria-current", name === current ? "step" : "false");
    });
  }

  async function finishJob(job, status) {
    job.final = true;
    stopWatching();
    el.cancel.hidden = true;
    updateSubmit();
    let doc = null;
    try { doc = await getJob(job.id); } catch { /* shown below from the event alone */ }
    // A cancelled job's objects are being deleted as it is read: only a document that agrees
    // with the final event is trusted.
    if (doc && doc.state !== status.state) doc = null;
    if (doc) {
      renderStages(doc.state, { ...doc.stages, [doc.state]: doc.stages?.[doc.state] ?? doc.updated_at });
      if (doc.updated_at && doc.created_at) el.elapsed.textContent = seconds(doc.updated_at - doc.created_at);
      state.recentDocs.set(job.id, doc);
      updateRecent(job.id, { state: doc.state });
    }
    if (status.state === "done" && doc) {
      el.jobStatus.textContent = `Done in ${el.elapsed.textContent}.`;
      showResult(doc, job.localUrl);
    } else if (status.state === "failed") {
      el.jobStatus.textContent = STATE_TEXT.failed;
      showAlert(el.jobError, "Restora could not finish this job.", doc?.error || status.error || "no reason was given");
    }
    renderRecent();
  }

  async function cancelJob() {
    const job = state.job;
    if (!job || job.final) return;
    el.cancel.disabled = true;
    el.jobStatus.textContent = "Asking the server to cancel…";
    let response;
    try {
      response = await fetch(`${API}/jobs/${encodeURIComponent(job.id)}`,
        { method: "DELETE", headers: ownerHeaders(job.id) });
    } catch (err) {
      el.jobStatus.textContent = `Could not reach the server to cancel: ${err.message}`;
      el.cancel.disabled = false;
      return;
    }
    const body = await readBody(response);
    if (response.ok) {
      if (!job.final) {
        el.jobStatus.textContent = body.deleted
          ? "Cancelled; the server deleted the job's files."
          : "Cancelling: the job stops at its next step.";
      }
    } else {
      // aiohttp answers a method it has no route for with a plain-text 405, not JSON.
      const unsupported = response.status === 405 || response.status === 501;
      const reason = unsupported ? "this server cannot cancel jobs yet" : body.error || response.statusText;
      el.jobStatus.textContent = `Not cancelled (HTTP ${response.status}): ${sentence(reason)} The job goes on.`;
      el.cancel.disabled = job.final;
    }
  }

  // ------------------------------------------------------------------ result and comparison
  const view = { w: 1, h: 1, z: 1, tx: 0, ty: 0, fit: true };

  function showResult(doc, localUrl) {
    const out = doc.output || {};
    const inp = doc.input || {};
    const huge = out.width * out.height > HUGE_PIXELS;
    const afterSrc = (huge && doc.preview_url) || doc.result_view_url || doc.result_url;
    el.resultCard.hidden = false;
    el.before.onerror = () => {
      if (localUrl && el.before.src !== localUrl) el.before.src = localUrl;
    };
    el.before.src = doc.original_url || localUrl || "";
    el.after.src = afterSrc;
    el.download.href = doc.result_url;
    el.openResult.href = doc.result_view_url || doc.result_url;
    describeResult(doc, inp, out);
    if (out.width && out.height) setStageSize(out.width, out.height);
    else el.after.addEventListener("load", () => setStageSize(el.after.naturalWidth, el.after.naturalHeight), { once: true });
    el.compare.value = "50";
    updateCompareText();
    el.resultCard.scrollIntoView({ behavior: scrollBehavior(), block: "start" });
  }

  function describeResult(doc, inp, out) {
    el.resultInfo.replaceChildren();
    const add = (text, strong) => {
      const node = document.createElement(strong ? "strong" : "span");
      node.textContent = text;
      el.resultInfo.append(node);
    };
    if (inp.width) add(`${dims(inp.width, inp.height)} → `);
    if (out.width) add(`${dims(out.width, out.height)} px`, true);
    const factor = inp.width && out.width ? out.width / inp.width : 1;
    const extra = [];
    if (factor !== 1) extra.push(`${Number(factor.toFixed(2))}× larger`);
    if (doc.options?.format) extra.push(doc.options.format.toUpperCase());
    if (out.bytes) extra.push(formatBytes(out.bytes));
    if (doc.model) extra.push(`model: ${doc.model}`);
    if (doc.options?.ensemble) extra.push("8-pass ensemble");
    if (extra.length) add(` · ${extra.join(" · ")}`);
    const auto = doc.auto || doc.details?.auto;
    if (auto && Array.isArray(auto.chain)) {
      const chose = document.createElement("span");
      chose.id = "auto-choice";
      chose.className = "auto-choice";
      const fixes = auto.chain.map((s) => TASK_LABELS[s] || s).join(" → ") || "nothing to fix";
      const why = Array.isArray(auto.reasons) && auto.reasons.length ? ` (${auto.reasons.join("; ")})` : "";
      chose.textContent = `Auto chose: ${fixes}${why}`;
      el.resultInfo.append(chose);
    }
    el.resultInfo.dataset.width = out.width || "";
    el.resultInfo.dataset.height = out.height || "";
  }

  function setStageSize(w, h) {
    view.w = w;
    view.h = h;
    // The viewer takes the result's shape, within bounds, so little of it is empty border.
    const wanted = (el.viewer.clientWidth * h) / w;
    el.viewer.style.height = `${Math.round(Math.min(Math.max(wanted, 224), window.innerHeight * 0.7, 720))}px`;
    el.stage.style.width = `${w}px`;
    el.stage.style.height = `${h}px`;
    zoomFit();
  }

  function viewportSize() {
    return { vw: el.viewer.clientWidth, vh: el.viewer.clientHeight };
  }

  function fitZoom() {
    const { vw, vh } = viewportSize();
    return Math.min(vw / view.w, vh / view.h, 8);
  }

  function clampPan() {
    const { vw, vh } = viewportSize();
    const sw = view.w * view.z;
    const sh = view.h * view.z;
    view.tx = sw <= vw ? (vw - sw) / 2 : Math.min(0, Math.max(vw - sw, view.tx));
    view.ty = sh <= vh ? (vh - sh) / 2 : Math.min(0, Math.max(vh - sh, view.ty));
  }

  function applyView() {
    clampPan();
    el.stage.style.transform = `translate(${view.tx}px, ${view.ty}px) scale(${view.z})`;
    // Past 200 % a close look wants the real pixels, not the browser's smoothing of them.
    el.viewer.classList.toggle("pixelated", !view.fit && view.z >= 2);
    el.zoomLevel.textContent = `${Math.round(view.z * 100)}%`;
    el.viewer.dataset.zoom = String(view.z);
    applyCompare();
  }

  // The divider sits at a fixed place in the viewport; the after image is clipped in its own
  // pixels so the split stays under the divider at any zoom and pan.
  function applyCompare() {
    const { vw } = viewportSize();
    const x = (Number(el.compare.value) / 100) * vw;
    el.divider.style.left = `${x}px`;
    const cut = Math.min(view.w, Math.max(0, (x - view.tx) / view.z));
    el.after.style.clipPath = `inset(0 0 0 ${cut}px)`;
  }

  function updateCompareText() {
    const v = Number(el.compare.value);
    el.compare.setAttribute("aria-valuetext", `${v}% before, ${100 - v}% after`);
    applyCompare();
  }

  function zoomTo(z, cx, cy) {
    const { vw, vh } = viewportSize();
    const x = cx ?? vw / 2;
    const y = cy ?? vh / 2;
    const nz = Math.min(16, Math.max(Math.min(fitZoom(), 1) / 2, z));
    view.tx = x - ((x - view.tx) / view.z) * nz;
    view.ty = y - ((y - view.ty) / view.z) * nz;
    view.z = nz;
    view.fit = false;
    applyView();
  }

  function zoomFit() {
    view.z = fitZoom();
    view.fit = true;
    view.tx = 0;
    view.ty = 0;
    applyView();
  }

  function bindViewer() {
    el.compare.addEventListener("input", updateCompareText);
    el.zoomIn.addEventListener("click", () => zoomTo(view.z * 1.5));
    el.zoomOut.addEventListener("click", () => zoomTo(view.z / 1.5));
    el.zoomFit.addEventListener("click", zoomFit);
    el.zoom100.addEventListener("click", () => zoomTo(1));
    el.viewer.addEventListener("wheel", (event) => {
      event.preventDefault();
      const rect = el.viewer.getBoundingClientRect();
      zoomTo(view.z * Math.exp(-event.deltaY * 0.0015), event.clientX - rect.left, event.clientY - rect.top);
    }, { passive: false });
    el.viewer.addEventListener("dblclick", (event) => {
      const rect = el.viewer.getBoundingClientRect();
      if (Math.abs(view.z - 1) < 1e-3) zoomFit();
      else zoomTo(1, event.clientX - rect.left, event.clientY - rect.top);
    });
    el.viewer.addEventListener("keydown", onViewerKey);
    bindViewerPointers();
    new ResizeObserver(() => (view.fit ? zoomFit() : applyView())).observe(el.viewer);
  }

  function onViewerKey(event) {
    const step = event.shiftKey ? 200 : 40;
    const keys = {
      ArrowLeft: () => { view.tx += step; applyView(); },
      ArrowRight: () => { view.tx -= step; applyView(); },
      ArrowUp: () => { view.ty += step; applyView(); },
      ArrowDown: () => { view.ty -= step; applyView(); },
      "+": () => zoomTo(view.z * 1.5),
      "=": () => zoomTo(view.z * 1.5),
      "-": () => zoomTo(view.z / 1.5),
      0: zoomFit,
      1: () => zoomTo(1),
      "[": () => nudgeCompare(-5),
      "]": () => nudgeCompare(5),
    };
    const action = keys[event.key];
    if (action) {
      event.preventDefault();
      action();
    }
  }

  function nudgeCompare(delta) {
    el.compare.value = String(Math.min(100, Math.max(0, Number(el.compare.value) + delta)));
    updateCompareText();
  }

  // One pointer on the divider moves the split; one elsewhere pans; two pinch-zoom.
  function bindViewerPointers() {
    const pointers = new Map();
    let mode = null;
    let pinch = null;
    const local = (event) => {
      const rect = el.viewer.getBoundingClientRect();
      return [event.clientX - rect.left, event.clientY - rect.top];
    };
    el.viewer.addEventListener("pointerdown", (event) => {
      if (event.pointerType === "mouse" && event.button !== 0) return;
      el.viewer.setPointerCapture(event.pointerId);
      pointers.set(event.pointerId, local(event));
      if (pointers.size === 2) {
        const [a, b] = [...pointers.values()];
        pinch = { d: Math.hypot(a[0] - b[0], a[1] - b[1]), z: view.z };
        mode = "pinch";
      } else if (pointers.size === 1) {
        mode = el.divider.contains(event.target) ? "divider" : "pan";
        if (mode === "divider") moveDivider(local(event)[0]);
        el.viewer.classList.toggle("panning", mode === "pan");
      }
    });
    el.viewer.addEventListener("pointermove", (event) => {
      if (!pointers.has(event.pointerId)) return;
      const prev = pointers.get(event.pointerId);
      const now = local(event);
      pointers.set(event.pointerId, now);
      if (mode === "divider") moveDivider(now[0]);
      else if (mode === "pan") {
        view.tx += now[0] - prev[0];
        view.ty += now[1] - prev[1];
        view.fit = false;
        applyView();
      } else if (mode === "pinch" && pointers.size === 2) {
        const [a, b] = [...pointers.values()];
        const d = Math.hypot(a[0] - b[0], a[1] - b[1]);
        zoomTo(pinch.z * (d / pinch.d), (a[0] + b[0]) / 2, (a[1] + b[1]) / 2);
      }
    });
    const end = (event) => {
      pointers.delete(event.pointerId);
      if (pointers.size === 0) mode = null;
      else if (mode === "pinch") mode = "pan";
      el.viewer.classList.remove("panning");
    };
    el.viewer.addEventListener("pointerup", end);
    el.viewer.addEventListener("pointercancel", end);
  }

  function moveDivider(x) {
    const { vw } = viewportSize();
    el.compare.value = String(Math.round(Math.min(100, Math.max(0, (x / vw) * 100))));
    updateCompareText();
  }

  // ------------------------------------------------------------------ batches (several photos)
  // Each photo is its own job with the same fix and options; the accepted ones are grouped in
  // a batch (POST /batches) whose id and token are kept in localStorage, so a reload shows the
  // grid again. The grid follows the batch document; "Download all" asks it for a fresh zip link.
  const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

  function loadSavedBatch() {
    try {
      const saved = JSON.parse(localStorage.getItem(BATCH_KEY) || "null");
      if (saved && typeof saved.id === "string" && typeof saved.token === "string" && Array.isArray(saved.items)) return saved;
    } catch { /* unreadable: start without */ }
    return null;
  }

  function saveBatch(batch) {
    try {
      if (!batch) {
        localStorage.removeItem(BATCH_KEY);
        return;
      }
      localStorage.setItem(BATCH_KEY, JSON.stringify({
        id: batch.id, token: batch.token, task: batch.task, created: batch.created,
        items: batch.items.map(({ name, jobId, jobIndex, error }) => ({ name, jobId, jobIndex, error })),
      }));
    } catch { /* private mode: the batch lasts as long as the page */ }
  }

  function batchHeaders(batch) {
    return { Authorization: `Bearer ${batch.token}` };
  }

  async function submitWithRetry(batch, item, file, task) {
    for (;;) {
      let answer;
      try {
        answer = await postForm(buildForm(task, file), (f) => {
          item.progress = f;
          renderBatchItem(item);
        });
      } catch (err) {
        return { status: 0, body: { error: err.message } };
      }
      if (answer.status !== 429 && answer.status !== 503) return answer;
      const wait = retrySeconds(answer);
      item.state = "waiting";
      item.progress = null;
      renderBatchItem(item);
      el.batchStatus.textContent = `Restora is busy: sending the next photo in ${wait} s…`;
      await sleep(wait * 1000);
      if (state.batch !== batch) return null;
      el.batchStatus.textContent = "Sending the photos…";
      item.state = "uploading";
      renderBatchItem(item);
    }
  }

  async function submitBatch() {
    const files = state.files;
    const task = selectedTask();
    if (files.length < 2 || el.submit.disabled) return;
    stopBatch();
    el.formError.hidden = true;
    const batch = {
      id: null, token: null, task, created: Date.now(), uploading: true, finished: false,
      items: files.map((file, i) => ({
        name: file.name || `photo-${i + 1}`, localUrl: state.fileUrls[i], jobId: null,
        jobIndex: null, state: "waiting", progress: null, error: null,
      })),
    };
    state.batch = batch;
    showBatch(batch);
    el.batchStatus.textContent = "Sending the photos…";
    updateSubmit();
    const accepted = [];
    for (const [i, file] of files.entries()) {
      const item = batch.items[i];
      item.state = "uploading";
      renderBatchItem(item);
      const answer = await submitWithRetry(batch, item, file, task);
      if (state.batch !== batch) return; // forgotten while uploading
      item.progress = null;
      if (answer.status === 202 || answer.status === 200) {
        const { id, owner_token: token } = answer.body;
        state.tokens.set(id, token);
        Object.assign(item, { jobId: id, jobIndex: accepted.length, state: "queued" });
        accepted.push({ id, token, name: item.name });
      } else {
        item.state = "refused";
        item.error = answer.body.error || `the server answered HTTP ${answer.status}`;
      }
      renderBatchItem(item);
    }
    batch.uploading = false;
    updateSubmit();
    if (!accepted.length) {
      el.batchStatus.textContent = "No photo was accepted.";
      return;
    }
    let response;
    try {
      response = await fetch(`${API}/batches`, {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ jobs: accepted }),
      });
    } catch (err) {
      el.batchStatus.textContent = `The batch could not be made: ${err.message}`;
      return;
    }
    const body = await readBody(response);
    if (state.batch !== batch) return;
    if (response.status !== 201 && response.status !== 200) {
      el.batchStatus.textContent = `The batch could not be made: ${sentence(body.error || `HTTP ${response.status}`)}`;
      return;
    }
    batch.id = body.id;
    batch.token = body.batch_token;
    saveBatch(batch);
    el.batchStatus.textContent = "";
    pollBatch();
  }

  function restoreBatch() {
    const saved = loadSavedBatch();
    if (!saved) return;
    const batch = {
      id: saved.id, token: saved.token, task: saved.task, created: saved.created,
      uploading: false, finished: false,
      items: saved.items.map((it) => ({
        name: String(it.name || ""), jobId: it.jobId ?? null, jobIndex: it.jobIndex ?? null,
        localUrl: null, state: it.jobIndex == null ? "refused" : "queued", progress: null,
        error: it.error || null,
      })),
    };
    state.batch = batch;
    showBatch(batch);
    pollBatch();
  }

  async function fetchBatch(batch) {
    const response = await fetch(`${API}/batches/${encodeURIComponent(batch.id)}`,
      { cache: "no-store", headers: batchHeaders(batch) });
    if (response.status === 404) return null;
    if (!response.ok) throw new Error((await readBody(response)).error || `HTTP ${response.status}`);
    return response.json();
  }

  async function pollBatch() {
    const batch = state.batch;
    if (!batch?.id) return;
    clearTimeout(state.batchTimer);
    let doc;
    try {
      doc = await fetchBatch(batch);
    } catch {
      doc = undefined; // a missed poll is retried below
    }
    if (state.batch !== batch) return;
    if (doc === null) {
      batch.finished = true;
      for (const item of batch.items) if (item.jobIndex != null) item.state = "gone";
      batch.items.forEach(renderBatchItem);
      el.batchStatus.textContent = "This batch is no longer on the server: its files expired.";
      el.batchDownload.disabled = true;
      return;
    }
    if (doc) applyBatchDoc(batch, doc);
    if (!batch.finished) state.batchTimer = setTimeout(pollBatch, 1000);
  }

  function applyBatchDoc(batch, doc) {
    for (const job of doc.jobs || []) {
      const item = batch.items.find((it) => it.jobIndex === job.index);
      if (!item) continue;
      item.state = job.state;
      item.progress = job.progress;
      item.error = job.error;
      if (job.thumbnail_url && !item.thumbUrl) item.thumbUrl = job.thumbnail_url;
      renderBatchItem(item);
    }
    batch.finished = !!doc.finished;
    const counts = doc.counts || {};
    const parts = [`${counts.done || 0} of ${doc.total} done`];
    if (counts.failed) parts.push(`${counts.failed} failed`);
    if (counts.cancelled) parts.push(`${counts.cancelled} cancelled`);
    const refused = batch.items.filter((it) => it.state === "refused").length;
    if (refused) parts.push(`${refused} not accepted`);
    el.batchCounts.textContent = parts.join(" · ");
    el.batchCard.dataset.finished = String(batch.finished);
    el.batchDownload.disabled = !batch.finished || !counts.done;
    if (batch.finished) el.batchStatus.textContent = counts.done ? "Finished: download the results as one zip." : "Finished, but no photo could be restored.";
  }

  function showBatch(batch) {
    el.batchCard.hidden = false;
    el.batchCard.dataset.finished = "false";
    el.batchCounts.textContent = "";
    el.batchStatus.textContent = "";
    el.batchDownload.disabled = true;
    el.batchGrid.replaceChildren(...batch.items.map((item) => {
      item.li = batchItemElement(item);
      renderBatchItem(item);
      return item.li;
    }));
    el.batchCard.scrollIntoView({ behavior: scrollBehavior(), block: "nearest" });
  }

  function batchItemElement(item) {
    const li = document.createElement("li");
    const thumb = document.createElement("div");
    thumb.className = "thumb";
    const name = document.createElement("strong");
    name.className = "batch-name";
    name.textContent = item.name;
    const line = document.createElement("span");
    line.className = "batch-state";
    const bar = document.createElement("progress");
    bar.max = 1;
    bar.hidden = true;
    li.append(thumb, name, line, bar);
    return li;
  }

  function renderBatchItem(item) {
    const li = item.li;
    if (!li) return;
    const [thumb, , line, bar] = li.children;
    li.dataset.state = item.state;
    const src = item.thumbUrl || item.localUrl;
    const img = thumb.querySelector("img");
    if (src && img?.dataset.src !== src) {
      const next = document.createElement("img");
      next.alt = "";
      next.src = src;
      next.dataset.src = src;
      next.addEventListener("error", () => { next.remove(); }, { once: true });
      thumb.replaceChildren(next);
    } else if (!src && !img) {
      thumb.textContent = "No preview";
    }
    let text = BATCH_STATE_TEXT[item.state] || item.state;
    if (item.progress != null && (item.state === "running" || item.state === "uploading")) {
      text += ` ${Math.round(item.progress * 100)}%`;
    }
    if (item.error && (item.state === "failed" || item.state === "refused")) text += `: ${sentence(item.error)}`;
    line.textContent = text;
    line.className = `batch-state state-${item.state}`;
    const showBar = item.progress != null && !FINAL_STATES.has(item.state);
    bar.hidden = !showBar;
    if (showBar) bar.value = item.progress;
  }

  function stopBatch() {
    clearTimeout(state.batchTimer);
  }

  async function downloadBatch() {
    const batch = state.batch;
    if (!batch?.id) return;
    el.batchDownload.disabled = true;
    try {
      const doc = await fetchBatch(batch);
      if (!doc) throw new Error("the batch is no longer on the server");
      applyBatchDoc(batch, doc);
      if (!doc.finished) {
        el.batchStatus.textContent = "Some photos are not finished yet.";
        return;
      }
      // The zip link carries a short-lived access token, so it is asked for just now.
      const link = document.createElement("a");
      link.href = doc.zip_url;
      link.download = "";
      link.hidden = true;
      document.body.append(link);
      link.click();
      link.remove();
    } catch (err) {
      el.batchStatus.textContent = `The zip could not be fetched: ${sentence(err.message)}`;
    } finally {
      el.batchDownload.disabled = !batch.finished;
    }
  }

  function forgetBatch() {
    stopBatch();
    state.batch = null;
    saveBatch(null);
    el.batchCard.hidden = true;
    el.batchGrid.replaceChildren();
    updateSubmit();
  }

  // ------------------------------------------------------------------ recent jobs (localStorage)
  function loadRecent() {
    try {
      const list = JSON.parse(localStorage.getItem(RECENT_KEY) || "[]");
      return Array.isArray(list) ? list.filter((j) => j && typeof j.id === "string") : [];
    } catch {
      return [];
    }
  }

  function saveRecent(list) {
    try { localStorage.setItem(RECENT_KEY, JSON.stringify(list.slice(0, RECENT_MAX))); } catch { /* private mode */ }
  }

  function addRecent(entry) {
    saveRecent([entry, ...loadRecent().filter((j) => j.id !== entry.id)]);
    renderRecent();
  }

  function updateRecent(id, fields) {
    const list = loadRecent();
    const entry = list.find((j) => j.id === id);
    if (!entry || Object.entries(fields).every(([k, v]) => entry[k] === v)) return;
    Object.assign(entry, fields);
    saveRecent(list);
    renderRecent();
  }

  // The links in a job document are short-lived, so they are never stored: each page load
  // asks the API for fresh ones and marks jobs whose files are gone as expired.
  async function refreshRecent() {
    const list = loadRecent();
    await Promise.all(list.map(async (entry) => {
      try {
        const doc = await getJob(entry.id);
        if (doc) {
          state.recentDocs.set(entry.id, doc);
          entry.state = doc.state;
        } else if (entry.state !== "cancelled") {
          entry.state = "expired"; // deleted by the retention sweep
        }
      } catch { /* keep the last known state */ }
    }));
    saveRecent(list);
    renderRecent();
  }

  function renderRecent() {
    const list = loadRecent();
    el.recentEmpty.hidden = list.length > 0;
    el.recentClear.hidden = list.length === 0;
    el.recentList.replaceChildren(...list.map(recentItem));
  }

  function recentItem(entry) {
    const doc = state.recentDocs.get(entry.id);
    const li = document.createElement("li");
    const thumbUrl = doc && (doc.thumbnail_url || doc.preview_url || doc.result_view_url || doc.original_url);
    const thumb = document.createElement("button");
    thumb.type = "button";
    thumb.className = "thumb";
    if (thumbUrl && entry.state !== "expired") {
      const img = document.createElement("img");
      img.src = thumbUrl;
      img.alt = "";
      img.loading = "lazy";
      img.addEventListener("error", () => {
        thumb.replaceChildren("No preview");
        thumb.classList.add("thumb-missing");
      }, { once: true });
      thumb.append(img);
      thumb.setAttribute("aria-label", `Open ${TASK_LABELS[entry.task] || entry.task} job from ${new Date(entry.created).toLocaleString()}`);
      thumb.addEventListener("click", () => openRecent(entry));
    } else {
      thumb.classList.add("thumb-missing");
      thumb.disabled = true;
      thumb.textContent = entry.state === "expired" ? "Files expired" : "No preview";
    }
    const meta = document.createElement("div");
    meta.className = "meta";
    const title = document.createElement("strong");
    title.textContent = TASK_LABELS[entry.task] || entry.task;
    const name = document.createElement("span");
    name.textContent = entry.name || "";
    const when = document.createElement("span");
    when.className = `state-${entry.state}`;
    when.textContent = `${entry.state} · ${new Date(entry.created).toLocaleString([], { dateStyle: "short", timeStyle: "short" })}`;
    meta.append(title, name, when);
    if (doc?.result_url && entry.state === "done") {
      const link = document.createElement("a");
      link.href = doc.result_url;
      link.textContent = "Download";
      link.setAttribute("download", "");
      meta.append(link);
    }
    li.append(thumb, meta);
    return li;
  }

  async function openRecent(entry) {
    const doc = await getJob(entry.id).catch(() => null);
    if (!doc) {
      updateRecent(entry.id, { state: "expired" });
      return;
    }
    if (!FINAL_STATES.has(doc.state)) {
      watchJob(doc.id, doc.task, null, doc.events_url);
      return;
    }
    stopWatching();
    state.job = { id: doc.id, task: doc.task, final: true, times: doc.stages, state: doc.state };
    el.jobCard.hidden = false;
    el.cancel.hidden = true;
    el.progress.hidden = true;
    el.jobError.hidden = doc.state !== "failed";
    renderStages(doc.state, { ...doc.stages, [doc.state]: doc.stages?.[doc.state] ?? doc.updated_at });
    el.elapsed.textContent = doc.updated_at ? seconds(doc.updated_at - doc.created_at) : "";
    el.jobStatus.textContent = STATE_TEXT[doc.state] || doc.state;
    if (doc.state === "failed") showAlert(el.jobError, "Restora could not finish this job.", doc.error);
    if (doc.state === "done") showResult(doc, null);
    else el.resultCard.hidden = true;
    updateSubmit();
  }

  // ------------------------------------------------------------------ start-up
  function init() {
    if (matchMedia("(pointer: coarse)").matches || navigator.maxTouchPoints > 0) {
      document.documentElement.classList.add("touch");
    }
    new ResizeObserver(sizePreview).observe(el.dropzone);
    bindFileInputs();
    bindMaskPainting();
    bindViewer();
    bindAutoRange(el.sigmaAuto, el.sigma, el.sigmaOut);
    bindAutoRange(el.qualityAuto, el.quality, el.qualityOut);
    el.strength.addEventListener("input", () => { el.strengthOut.textContent = el.strength.value; });
    for (const radio of el.form.elements.task) radio.addEventListener("change", onTaskChange);
    el.model.addEventListener("change", describeModel);
    el.form.addEventListener("submit", onSubmit);
    el.cancel.addEventListener("click", cancelJob);
    el.again.addEventListener("click", () => {
      el.resultCard.hidden = true;
      el.jobCard.hidden = true;
      document.getElementById("upload-card").scrollIntoView({ behavior: scrollBehavior() });
      el.fileInput.focus();
    });
    el.recentClear.addEventListener("click", () => { saveRecent([]); renderRecent(); });
    el.batchDownload.addEventListener("click", downloadBatch);
    el.batchForget.addEventListener("click", forgetBatch);
    restoreBatch();
    loadCatalog();
    renderRecent();
    refreshRecent();
  }

  init();
})();
