// clipkit serve: the page. Plain JavaScript, no build step, talks only to this server's JSON API.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { info: null, file: null, busy: 0 };

// ---------------------------------------------------------------- API
async function api(path, options = {}) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) {
    let message = (body && (body.error || body.detail)) || `${response.status} ${response.statusText}`;
    if (response.status === 503) {
      const wait = response.headers.get("Retry-After");
      message = `The server is busy${wait ? `; try again in ${wait} s` : ""}. (${message})`;
    }
    throw new Error(message);
  }
  return body;
}
const postJSON = (path, data) => api(path, {
  method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(data) });
const postForm = (path, fields, file) => {
  const form = new FormData();
  for (const [name, value] of Object.entries(fields)) {
    if (value !== undefined && value !== null) form.append(name, typeof value === "string" ? value : JSON.stringify(value));
  }
  if (file) form.append("image", file, file.name || "upload.png");
  return api(path, { method: "POST", body: form });
};

// ---------------------------------------------------------------- small helpers
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}
function showError(message) { const box = $("#error"); box.textContent = message; box.hidden = false; }
function clearError() { $("#error").hidden = true; }
async function busy(button, work) {
  clearError();
  const buttons = button ? [button] : [];
  buttons.forEach((b) => { b.disabled = true; b.dataset.label = b.textContent; b.textContent = "Working…"; });
  $(".content").classList.add("busy");
  try { return await work(); }
  catch (error) { showError(error.message); }
  finally {
    buttons.forEach((b) => { b.disabled = false; b.textContent = b.dataset.label; });
    $(".content").classList.remove("busy");
  }
}
const k = () => Number($("#k").value);
function filters() {
  const out = {};
  document.querySelectorAll("#filters select").forEach((s) => {
    if (s.value !== "") out[s.dataset.column] = JSON.parse(s.value);
    s.classList.toggle("active", s.value !== "");
  });
  const n = Object.keys(out).length;
  $("#clear-filters").hidden = n === 0;
  $("#filter-count").textContent = n ? `· ${n} on` : "";
  return Object.keys(out).length ? out : null;
}

// ---------------------------------------------------------------- results
function hitCard(hit, { query = false } = {}) {
  const thumb = el("div", { class: "thumb" });
  if (hit.image_url) {
    thumb.append(el("img", { src: hit.image_url, alt: hit.caption || `item ${hit.id}`, loading: "lazy", width: 150, height: 150 }));
  } else {
    thumb.append(el("span", { class: "noimg", text: "no image" }));
  }
  const top = el("div", { class: "top" },
    query ? el("span", { class: "badge", text: "query" }) : el("span", { class: "score", text: hit.score.toFixed(3), title: "cosine similarity" }),
    el("span", { text: `#${hit.id}` }));
  const caption = el("div", { class: "caption", text: hit.caption || hit.key || "" });
  const details = Object.entries(hit.metadata || {}).map(([c, v]) => `${c}: ${v}`).join("\n");
  const card = el(query ? "div" : "button", { class: query ? "hit query" : "hit", "data-id": hit.id,
    title: query ? "the item these are like" : `more like #${hit.id}\n${details}` }, thumb, el("div", { class: "meta" }, top, caption));
  if (!query) card.addEventListener("click", () => moreLike(hit, card));
  return card;
}

function showResults(data, title, { queryHit = null } = {}) {
  $("#result-title").textContent = title;
  $("#result-meta").textContent = `${data.count} of ${state.info ? state.info.count.toLocaleString() : "?"} · ${data.took_ms} ms`;
  const grid = $("#grid");
  grid.replaceChildren();
  if (queryHit) grid.append(hitCard(queryHit, { query: true }));
  data.results.forEach((hit) => grid.append(hitCard(hit)));
  $("#empty").hidden = data.results.length > 0;
  if (!data.results.length) $("#empty").textContent = "Nothing matches (try fewer filters).";
  const words = $("#words");
  words.replaceChildren();
  words.hidden = !data.words;
  if (data.words) {
    words.append(el("span", { class: "muted", text: "Nearest words:" }));
    data.words.forEach((w) => words.append(el("span", { class: "chip", text: `${w.word} ${w.score.toFixed(2)}` })));
  }
}

// ---------------------------------------------------------------- searches
async function searchText(event) {
  event.preventDefault();
  const text = $("#q").value;
  await busy(event.submitter, async () => {
    const data = await postJSON("/search", { text, k: k(), filters: filters() });
    showResults(data, `“${text.trim()}”`);
  });
}

async function moreLike(hit, card) {
  await busy(null, async () => {
    card.classList.add("busy");
    const data = await postJSON("/search", { id: hit.id, k: k(), filters: filters() });
    showResults(data, `More like #${hit.id}`, { queryHit: hit });
    window.scrollTo({ top: 0, behavior: "smooth" });
  });
}

async function searchImage(button) {
  if (!state.file) return;
  await busy(button, async () => {
    const data = await postForm("/search", { k: String(k()), filters: filters() || undefined }, state.file);
    showResults(data, `Like ${state.file.name || "the uploaded image"}`);
  });
}

async function searchExpression(event) {
  event.preventDefault();
  const expression = $("#expr").value;
  await busy(event.submitter, async () => {
    const fields = { expression, k: k(), filters: filters() };
    const usesUpload = expression.includes('img:"upload"') || expression.includes("img:'upload'");
    const data = usesUpload && state.file
      ? await postForm("/search", { expression, k: String(k()), filters: filters() || undefined }, state.file)
      : await postJSON("/search", fields);
    showResults(data, expression.length > 60 ? expression.slice(0, 57) + "…" : expression);
  });
}

// ---------------------------------------------------------------- image upload + zero-shot
function setFile(file) {
  if (!file) return;
  state.file = file;
  const url = URL.createObjectURL(file);
  $("#upload-img").src = url;
  $("#upload-name").textContent = `${file.name || "image"} · ${(file.size / 1024).toFixed(1)} KB`;
  $("#upload").hidden = false;
  $("#zs-form").hidden = false;
  $("#zs-result").replaceChildren();
  searchImage($("#upload-search"));
}

async function classify(event) {
  event.preventDefault();
  if (!state.file) return;
  await busy(event.submitter, async () => {
    const data = await postForm("/zero-shot", { classes: $("#classes").value }, state.file);
    const bars = $("#zs-result");
    bars.replaceChildren();
    data.classes.forEach((c) => {
      const pct = (100 * c.probability).toFixed(1);
      bars.append(el("div", { class: "bar" }, el("span", { class: "name", text: c.class, title: c.class }),
        el("span", { class: "track" }, el("span", { class: "fill", style: `width:${pct}%` })),
        el("span", { class: "pct", text: `${pct}%` })));
    });
  });
}

// ---------------------------------------------------------------- generation
function generationOptions() {
  return { num_images: Number($("#num").value), steps: Number($("#steps").value), sampler: $("#sampler").value,
           guidance: Number($("#guidance").value), seed: Number($("#seed").value) };
}
function showGenerated(data, label) {
  const box = $("#generated");
  box.replaceChildren();
  data.images.forEach((src, i) => box.append(el("img", { src, alt: `generated image ${i + 1} of ${label}`, title: label })));
  $("#gen-meta").textContent = `${label} · ${data.images.length} images · ${data.seconds} s`;
  $("#gen-panel").hidden = false;
}
async function generate(event) {
  event.preventDefault();
  const text = $("#prompt").value;
  const negative = $("#negative").value.trim();
  await busy(event.submitter, async () => {
    const body = { text, ...generationOptions() };
    if (negative) body.negative_prompt = negative;
    showGenerated(await postJSON("/generate", body), `“${text.trim()}”`);
  });
}
async function generateExpression(event) {
  const expression = $("#expr").value;
  await busy(event.currentTarget, async () => {
    showGenerated(await postJSON("/generate", { expression, ...generationOptions() }), expression);
  });
}

// ---------------------------------------------------------------- start
async function start() {
  try {
    state.info = await api("/info");
  } catch (error) { showError(`Cannot reach the server: ${error.message}`); return; }
  const info = state.info;
  $("#stats").textContent = `${info.count.toLocaleString()} items · ${info.kind} index · dim ${info.dim} · ${info.model}`;
  $("#stats").title = $("#stats").textContent;
  const box = $("#filters");
  for (const [column, values] of Object.entries(info.filters)) {
    const select = el("select", { "data-column": column, "aria-label": `filter ${column}` }, el("option", { value: "", text: "any" }));
    values.forEach((v) => select.append(el("option", { value: JSON.stringify(v), text: String(v) })));
    select.addEventListener("change", filters);
    box.append(el("label", {}, column.replace(/_/g, " "), select));
  }
  $("#filters-box").hidden = Object.keys(info.filters).length === 0;
  $("#filters-box").open = window.innerWidth > 860;          // folded on a phone: results come first
  $("#clear-filters").addEventListener("click", () => { box.querySelectorAll("select").forEach((s) => { s.value = ""; }); filters(); });
  $("#num").max = info.limits.max_num_images;
  $("#steps").max = info.limits.max_steps;
  const sampler = $("#sampler");
  sampler.replaceChildren(...(info.samplers.length ? info.samplers : ["ddim"]).map((s) => el("option", { text: s })));
  $("#gen-off").hidden = info.unclip;
  $("#gen-form").hidden = !info.unclip;
  document.querySelectorAll(".gen-only").forEach((b) => { b.hidden = !info.unclip; });
  $("#empty").textContent = info.images
    ? "Type a query, drop an image, or click a result to see more like it."
    : "Type a query. (This index records no image files, so results show ids and scores only.)";
}

$("#search-form").addEventListener("submit", searchText);
$("#expr-form").addEventListener("submit", searchExpression);
$("#expr-generate").addEventListener("click", generateExpression);
$("#gen-form").addEventListener("submit", generate);
$("#zs-form").addEventListener("submit", classify);
$("#upload-search").addEventListener("click", (e) => searchImage(e.currentTarget));
$("#file").addEventListener("change", (e) => setFile(e.target.files[0]));
const drop = $("#drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (e) => setFile(e.dataTransfer.files[0]));
document.addEventListener("paste", (e) => {
  const item = [...(e.clipboardData || {}).items || []].find((i) => i.type.startsWith("image/"));
  if (item) setFile(item.getAsFile());
});
start();
