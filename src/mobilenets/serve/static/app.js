// The page at /: pick or drop an image, POST it to /v1/<task>, draw the answer. No dependencies.
"use strict";
const $ = (id) => document.getElementById(id);
const canvas = $("canvas"), ctx = canvas.getContext("2d");
let info = null, current = null; // current: {blob, bitmap}

// PASCAL VOC colour map (what tasks.segment's masks use)
function vocColour(i) {
  let r = 0, g = 0, b = 0, c = i;
  for (let j = 7; j >= 0; j--) {
    r |= ((c >> 0) & 1) << j; g |= ((c >> 1) & 1) << j; b |= ((c >> 2) & 1) << j; c >>= 3;
  }
  return [r, g, b];
}
function boxColour(i) { return `hsl(${(i * 67) % 360} 85% 45%)`; }

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "muted";
}

async function loadInfo() {
  try {
    const r = await fetch("/v1/info");
    info = await r.json();
    $("model").textContent = `${info.name} · ${info.task} · ${info.backend} · input ${info.input_size.join("×")}`;
    $("oip").textContent = `/v2/models/${info.name}/infer`;
    const sel = $("task");
    for (const [task, state] of Object.entries(info.tasks)) {
      const opt = document.createElement("option");
      opt.value = task; opt.textContent = state === "ok" ? task : `${task} (unavailable)`;
      opt.disabled = state !== "ok";
      sel.appendChild(opt);
    }
    sel.value = info.task;
    syncControls();
  } catch (e) {
    setStatus(`cannot reach the server: ${e}`, true);
  }
}

function syncControls() {
  const task = $("task").value;
  $("topk-box").hidden = task !== "classify";
  $("thr-box").hidden = task !== "detect";
}

async function handleFile(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) { setStatus(`${file.name} is not an image (${file.type})`, true); return; }
  let bitmap = null;
  try { bitmap = await createImageBitmap(file); } catch (e) { bitmap = null; } // the server may still decode it
  current = { blob: file, bitmap, name: file.name };
  drawImage();
  await run();
}

function drawImage() {
  $("hint").hidden = true;
  canvas.hidden = false;
  if (current && current.bitmap) {
    canvas.width = current.bitmap.width; canvas.height = current.bitmap.height;
    ctx.drawImage(current.bitmap, 0, 0);
  } else {
    canvas.width = 320; canvas.height = 40;
    ctx.fillStyle = "#666"; ctx.fillText("(the browser cannot show this image)", 10, 24);
  }
}

async function run() {
  if (!current) return;
  const task = $("task").value;
  const params = new URLSearchParams();
  if (task === "classify") params.set("top_k", $("topk").value || "5");
  if (task === "detect") params.set("score_threshold", $("threshold").value || "0.5");
  if (task === "segment") params.set("mask", "1");
  setStatus(`${task}: sending ${current.name}…`);
  $("output").innerHTML = "";
  const t0 = performance.now();
  let r, doc;
  try {
    r = await fetch(`/v1/${task}?${params}`, {
      method: "POST", body: current.blob,
      headers: { "Content-Type": current.blob.type || "application/octet-stream" },
    });
    doc = await r.json();
  } catch (e) {
    setStatus(`request failed: ${e}`, true); return;
  }
  const ms = performance.now() - t0;
  if (!r.ok) { setStatus(`${r.status}: ${doc.error || "error"}`, true); return; }
  setStatus(`${task} · ${current.name}`);
  $("latency").textContent = `latency ${ms.toFixed(1)} ms round trip · ${doc.ms} ms on the server`;
  drawImage();
  ({ classify: showClassify, embed: showEmbed, detect: showDetect, segment: showSegment })[task](doc);
}

function showClassify(doc) {
  const out = $("output");
  for (const p of doc.predictions) {
    const row = document.createElement("div");
    row.className = "bar";
    row.innerHTML = `<div class="label"><span class="name"></span><span>${(100 * p.score).toFixed(1)}%</span></div>
      <div class="track"><div class="fill" style="width:${(100 * p.score).toFixed(1)}%"></div></div>`;
    row.querySelector(".name").textContent = `${p.label} [${p.index}]`;
    out.appendChild(row);
  }
}

function showEmbed(doc) {
  const v = doc.embedding, norm = Math.sqrt(v.reduce((s, x) => s + x * x, 0));
  const p = document.createElement("p");
  p.textContent = `${doc.dim}-d embedding, L2 norm ${norm.toFixed(3)}: [${v.slice(0, 8).map((x) => x.toFixed(3)).join(", ")}, …]`;
  $("output").appendChild(p);
}

function showDetect(doc) {
  const table = document.createElement("table");
  table.innerHTML = "<tr><th>label</th><th>score</th><th>box (px)</th></tr>";
  ctx.lineWidth = Math.max(2, canvas.width / 300);
  ctx.font = `${Math.max(12, canvas.width / 40)}px sans-serif`;
  doc.detections.forEach((d, i) => {
    const b = Array.isArray(d.box) ? d.box : [d.box.xmin, d.box.ymin, d.box.xmax, d.box.ymax];
    const colour = boxColour(d.category_id ?? i);
    ctx.strokeStyle = colour; ctx.strokeRect(b[0], b[1], b[2] - b[0], b[3] - b[1]);
    const text = `${d.label} ${(100 * d.score).toFixed(0)}%`;
    const w = ctx.measureText(text).width + 6, h = parseInt(ctx.font, 10) + 4;
    ctx.fillStyle = colour; ctx.fillRect(b[0], Math.max(0, b[1] - h), w, h);
    ctx.fillStyle = "#fff"; ctx.fillText(text, b[0] + 3, Math.max(h - 4, b[1] - 4));
    const tr = document.createElement("tr");
    tr.innerHTML = `<td></td><td>${d.score.toFixed(3)}</td><td>${b.map((x) => Math.round(x)).join(", ")}</td>`;
    tr.firstChild.textContent = d.label;
    table.appendChild(tr);
  });
  if (!doc.detections.length) { const p = document.createElement("p"); p.textContent = "no detections above the threshold"; $("output").appendChild(p); }
  else $("output").appendChild(table);
}

async function showSegment(doc) {
  const labels = Object.keys(doc.classes);
  const table = document.createElement("table");
  table.innerHTML = "<tr><th>class</th><th>share</th></tr>";
  const index = {};
  if (info && info.labels) info.labels.forEach((l, i) => (index[l] = i));
  for (const l of labels) {
    const tr = document.createElement("tr");
    tr.innerHTML = `<td><span class="swatch"></span><span class="n"></span></td><td>${(100 * doc.classes[l]).toFixed(1)}%</td>`;
    tr.querySelector(".n").textContent = l;
    if (l in index) tr.querySelector(".swatch").style.background = `rgb(${vocColour(index[l]).join(",")})`;
    table.appendChild(tr);
  }
  $("output").appendChild(table);
  if (!doc.mask_png) return;
  const mask = await createImageBitmap(await (await fetch(`data:image/png;base64,${doc.mask_png}`)).blob());
  const off = new OffscreenCanvas(canvas.width, canvas.height), octx = off.getContext("2d");
  octx.imageSmoothingEnabled = false;
  octx.drawImage(mask, 0, 0, canvas.width, canvas.height);
  const m = octx.getImageData(0, 0, canvas.width, canvas.height), img = ctx.getImageData(0, 0, canvas.width, canvas.height);
  for (let i = 0; i < m.data.length; i += 4) {
    if (m.data[i] === 0 && m.data[i + 1] === 0 && m.data[i + 2] === 0) continue; // background stays as is
    for (let c = 0; c < 3; c++) img.data[i + c] = 0.45 * img.data[i + c] + 0.55 * m.data[i + c];
  }
  ctx.putImageData(img, 0, 0);
}

const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (e) => handleFile(e.dataTransfer && e.dataTransfer.files[0]));
$("file").addEventListener("change", (e) => handleFile(e.target.files[0]));
$("task").addEventListener("change", () => { syncControls(); run(); });
$("topk").addEventListener("change", run);
$("threshold").addEventListener("change", run);
loadInfo();
