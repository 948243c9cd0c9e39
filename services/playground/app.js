// The playground: four panels over the gateway's public API, plain browser JavaScript (no build, no CDN).
// Every call sends the key typed in the header as X-API-Key; errors are the gateway's one envelope,
// {"error": {"message", "type", "param", "code"}}, shown in the panel that made the call.
"use strict";

const KEY_STORAGE = "qwen-playground-api-key";
const $ = (selector, root = document) => root.querySelector(selector);
const config = { auth: true, services: {} };

// ---------------------------------------------------------------- API calls and the error envelope

class ApiError extends Error {
  constructor(message, { status = 0, type = null, code = null, param = null, retryAfter = null } = {}) {
    super(message);
    Object.assign(this, { status, type, code, param, retryAfter });
  }

  static async from(response) {
    const text = await response.text().catch(() => "");
    let envelope = null;
    try {
      envelope = JSON.parse(text).error;
    } catch {
      // not JSON: shown as text below
    }
    const info = { status: response.status, retryAfter: response.headers.get("Retry-After") };
    if (envelope && typeof envelope === "object" && typeof envelope.message === "string") {
      return new ApiError(envelope.message, { ...info, type: envelope.type, code: envelope.code, param: envelope.param });
    }
    return new ApiError(text.trim().slice(0, 300) || response.statusText || "request failed", info);
  }

  get heading() {
    if (!this.status) return this.type === "network_error" ? "Network error" : "Not sent";
    return [`HTTP ${this.status}`, this.type, this.code].filter(Boolean).join(" · ");
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (apiKey()) headers.set("X-API-Key", apiKey());
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (err) {
    throw new ApiError(err.message, { type: "network_error" });
  }
  if (!response.ok) throw await ApiError.from(response);
  return response;
}

function showError(box, err) {
  box.replaceChildren();
  const head = document.createElement("strong");
  head.textContent = err instanceof ApiError ? err.heading : "Page error";
  const message = document.createElement("span");
  message.className = "message";
  message.textContent = err.message;
  box.append(head, " ", message);
  if (err.param) box.append(` (parameter: ${err.param})`);
  if (err.retryAfter) box.append(` Retry after ${err.retryAfter} s.`);
  box.hidden = false;
}

// Runs one panel action: busy state, elapsed time, errors in the panel's alert box. `data-state` on the
// panel (idle | busy | done | error) and `data-runs` (actions finished) are what tests can follow.
async function runPanel(panel, action) {
  const button = $("button[type=submit]", panel);
  const status = $(".status", panel);
  const errorBox = $(".error", panel);
  errorBox.hidden = true;
  button.disabled = true;
  panel.dataset.state = "busy";
  status.textContent = "working…";
  const t0 = performance.now();
  try {
    await action();
    status.textContent = `done in ${((performance.now() - t0) / 1000).toFixed(1)} s`;
    panel.dataset.state = "done";
  } catch (err) {
    status.textContent = "";
    showError(errorBox, err);
    panel.dataset.state = "error";
    if (!(err instanceof ApiError)) console.error(err); // a bug in this page, not an API answer
  } finally {
    button.disabled = false;
    panel.dataset.runs = Number(panel.dataset.runs || 0) + 1;
  }
}

function need(condition, message) {
  if (!condition) throw new ApiError(message);
}

// ---------------------------------------------------------------- files: pick or drop

function wireDropZones() {
  for (const zone of document.querySelectorAll(".drop")) {
    const input = document.getElementById(zone.dataset.file);
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      if (!event.dataTransfer.files.length) return;
      input.files = event.dataTransfer.files;
      input.dispatchEvent(new Event("change", { bubbles: true }));
    });
  }
}

// One object URL per slot, revoked when replaced.
const objectUrls = new Map();
function objectUrl(slot, blob) {
  if (objectUrls.has(slot)) URL.revokeObjectURL(objectUrls.get(slot));
  const url = URL.createObjectURL(blob);
  objectUrls.set(slot, url);
  return url;
}

function playQuietly(audio) {
  // Browsers may refuse autoplay; the controls are there.
  audio.play().catch(() => {});
}

// ---------------------------------------------------------------- alignment: karaoke lyrics

// mm:ss.xx as the LRC writer (services/aligner/formats.py) has it: minutes are not wrapped into hours.
const pad2 = (n) => String(n).padStart(2, "0");
const centis = (t) => Math.max(0, Math.round(t * 100));
const lrcTime = (t) => `${pad2(Math.floor(centis(t) / 6000))}:${pad2(Math.floor((centis(t) % 6000) / 100))}.${pad2(centis(t) % 100)}`;

const karaoke = { segments: [], active: -1 };

function renderLine(segment, index) {
  const li = document.createElement("li");
  li.className = "line";
  li.dataset.testid = "align-line";
  li.dataset.index = index;
  li.dataset.start = segment.start;
  li.dataset.end = segment.end;
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = `[${lrcTime(segment.start)}]`;
  const text = document.createElement("span");
  text.className = "text";
  // Words are wrapped where they are found in the line, so the line reads exactly as typed (CJK included).
  let cursor = 0;
  const line = segment.text;
  for (const word of Array.isArray(segment.words) ? segment.words : []) {
    const at = typeof word.text === "string" && word.text ? line.indexOf(word.text, cursor) : -1;
    if (at < 0) continue;
    if (at > cursor) text.append(line.slice(cursor, at));
    const span = document.createElement("span");
    span.className = "word";
    span.dataset.start = word.start;
    span.textContent = word.text;
    text.append(span);
    cursor = at + word.text.length;
  }
  text.append(line.slice(cursor));
  if (!line.trim()) text.textContent = "♪";
  li.append(time, " ", text);
  return li;
}

// A line is lit from its start until the next line starts (the last one until its end), as LRC players do.
function activeLine(t) {
  const segs = karaoke.segments;
  let found = -1;
  for (let i = 0; i < segs.length; i++) {
    if (segs[i].start <= t) found = i;
    else break;
  }
  if (found >= 0 && found === segs.length - 1 && t > segs[found].end) return -1;
  return found;
}

function updateHighlight() {
  const player = $("#align-player");
  const list = $("#align-lines");
  const t = player.currentTime;
  const index = activeLine(t);
  if (index !== karaoke.active) {
    list.querySelector(".line.active")?.classList.remove("active");
    for (const word of list.querySelectorAll(".word.sung")) word.classList.remove("sung");
    karaoke.active = index;
    const li = index >= 0 ? list.children[index] : null;
    if (li) {
      li.classList.add("active");
      // Keep the lit line in view inside the list (not the page).
      if (li.offsetTop < list.scrollTop || li.offsetTop + li.offsetHeight > list.scrollTop + list.clientHeight) {
        list.scrollTop = li.offsetTop - list.clientHeight / 3;
      }
    }
    list.dataset.active = index;
  }
  if (index >= 0) {
    for (const word of list.children[index].querySelectorAll(".word")) {
      word.classList.toggle("sung", Number(word.dataset.start) <= t);
    }
  }
}

function followPlayback() {
  const player = $("#align-player");
  const tick = () => {
    updateHighlight();
    if (!player.paused && !player.ended) requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
}

// The .lrc download, written from the JSON answer shown (same lines as format=lrc: [length:], then one
// [mm:ss.xx] line each; a blank lyric line stays, untexted, to clear the display).
function lrcText(body) {
  const out = typeof body.duration === "number" ? [`[length:${lrcTime(body.duration).replace(/\.\d\d$/, "")}]`] : [];
  for (const seg of body.segments) out.push(`[${lrcTime(seg.start)}]${seg.text.trim() ? " " + seg.text.trim() : ""}`);
  return out.join("\n") + "\n";
}

function setupAlign() {
  const panel = $("#panel-align");
  const input = $("#align-audio");
  const player = $("#align-player");
  const list = $("#align-lines");
  input.addEventListener("change", () => {
    if (!input.files[0]) return;
    player.src = objectUrl("song", input.files[0]);
    karaoke.segments = []; // lines of another song are not shown over this one
    list.replaceChildren();
    $("#align-download").hidden = true;
  });
  for (const event of ["timeupdate", "seeked", "loadedmetadata"]) player.addEventListener(event, updateHighlight);
  player.addEventListener("play", followPlayback);
  list.addEventListener("click", (event) => {
    const li = event.target.closest(".line");
    if (!li) return;
    player.currentTime = Number(li.dataset.start);
    updateHighlight();
  });
  $("#align-form").addEventListener("submit", (event) => {
    event.preventDefault();
    runPanel(panel, async () => {
      const file = input.files[0];
      const lines = $("#align-lyrics").value.replace(/\s+$/, "").split(/\r?\n/);
      need(file, "choose a song first");
      need(lines.some((line) => line.trim()), "type the lyrics first");
      const form = new FormData();
      form.append("audio", file);
      form.append("lyrics", JSON.stringify(lines));
      form.append("format", "json");
      const body = await (await api("/api/v1/align", { method: "POST", body: form })).json();
      need(Array.isArray(body.segments), "unexpected answer: no segments");
      karaoke.segments = body.segments;
      karaoke.active = -2;
      list.replaceChildren(...body.segments.map(renderLine));
      updateHighlight();
      const download = $("#align-download");
      download.href = objectUrl("lrc", new Blob([lrcText(body)], { type: "text/plain" }));
      download.download = `${file.name.replace(/\.[^.]+$/, "") || "lyrics"}.lrc`;
      download.hidden = false;
    });
  });
}

// ---------------------------------------------------------------- speech

async function loadVoices() {
  const select = $("#tts-voice");
  const body = await (await api("/v1/audio/voices")).json();
  const previous = select.value;
  select.replaceChildren(...body.data.map((voice) => {
    const option = document.createElement("option");
    option.value = voice.id;
    option.textContent = `${voice.name} (${voice.language})`;
    option.title = voice.description || "";
    return option;
  }));
  if (previous && body.data.some((v) => v.id === previous)) select.value = previous;
}

function setupSpeech() {
  const panel = $("#panel-tts");
  const audio = $("#tts-audio");
  $("#tts-form").addEventListener("submit", (event) => {
    event.preventDefault();
    runPanel(panel, async () => {
      const input = $("#tts-input").value;
      const voice = $("#tts-voice").value;
      const format = $("#tts-format").value;
      need(input.trim(), "type some text first");
      need(voice, "no voice to choose: use your API key first");
      const response = await api("/v1/audio/speech", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ model: config.services.tts.model, input, voice, response_format: format }),
      });
      const blob = await response.blob();
      audio.src = objectUrl("speech", blob);
      playQuietly(audio);
      const download = $("#tts-download");
      download.href = audio.src;
      download.download = `speech.${format}`;
      download.textContent = `Download speech.${format} (${Math.round(blob.size / 1024)} KB)`;
      download.hidden = false;
    });
  });
}

// ---------------------------------------------------------------- audio caption (streamed)

function readDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new ApiError(`could not read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

// OpenAI's SSE: `data: {chunk}` events, then `data: [DONE]`.
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
    const events = buffer.split(/\r?\n\r?\n/);
    buffer = done ? "" : events.pop();
    for (const event of events) {
      const data = event.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
    if (done) return;
  }
}

function setupCaption() {
  const panel = $("#panel-caption");
  const output = $("#caption-text");
  const meta = $("#caption-meta");
  $("#caption-form").addEventListener("submit", (event) => {
    event.preventDefault();
    runPanel(panel, async () => {
      const file = $("#caption-audio").files[0];
      need(file, "choose an audio file first");
      output.textContent = "";
      meta.textContent = "";
      const extension = (file.name.match(/\.([a-z0-9]+)$/i) || [])[1] || "wav";
      const response = await api("/v1/chat/completions", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({
          model: config.services.captioner.model,
          stream: true,
          stream_options: { include_usage: true },
          messages: [{ role: "user", content: [
            { type: "input_audio", input_audio: { data: await readDataUrl(file), format: extension.toLowerCase() } },
          ] }],
        }),
      });
      let finish = null;
      let usage = null;
      for await (const chunk of sseEvents(response)) {
        const choice = (chunk.choices || [])[0];
        if (choice?.delta?.content) output.textContent += choice.delta.content;
        if (choice?.finish_reason) finish = choice.finish_reason;
        if (chunk.usage) usage = chunk.usage;
      }
      need(finish, "the caption stream ended early");
      meta.textContent = [`finish: ${finish}`, usage && `${usage.completion_tokens} tokens`].filter(Boolean).join(" · ");
    });
  });
}

// ---------------------------------------------------------------- diagram -> table

// The first markdown table in `text` as {header, rows}, or null. Model output is untrusted and, with tiny
// test models, random: anything that is not a header row + separator row is "not a table".
function parseMarkdownTable(text) {
  const cells = (line) => {
    let s = line.trim();
    if (s.startsWith("|")) s = s.slice(1);
    if (s.endsWith("|") && !s.endsWith("\\|")) s = s.slice(0, -1);
    return s.split(/(?<!\\)\|/).map((c) => c.trim().replace(/\\\|/g, "|"));
  };
  const isSeparator = (line) => /^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?$/.test(line.trim());
  const lines = String(text).split(/\r?\n/);
  for (let i = 1; i < lines.length; i++) {
    if (!isSeparator(lines[i]) || !lines[i - 1].includes("|")) continue;
    const header = cells(lines[i - 1]);
    const rows = [];
    for (let j = i + 1; j < lines.length && lines[j].includes("|"); j++) {
      const row = cells(lines[j]);
      rows.push(header.map((_, k) => row[k] ?? ""));
    }
    return { header, rows };
  }
  return null;
}

function renderTable({ header, rows }) {
  const table = document.createElement("table");
  table.dataset.testid = "diagram-table";
  const head = table.createTHead().insertRow();
  for (const cell of header) {
    const th = document.createElement("th");
    th.textContent = cell;
    head.append(th);
  }
  const body = table.createTBody();
  for (const row of rows) {
    const tr = body.insertRow();
    for (const cell of row) tr.insertCell().textContent = cell;
  }
  return table;
}

function setupDiagram() {
  const panel = $("#panel-diagram");
  const input = $("#diagram-file");
  const preview = $("#diagram-preview");
  const result = $("#diagram-result");
  const meta = $("#diagram-meta");
  input.addEventListener("change", () => {
    if (!input.files[0]) return;
    preview.src = objectUrl("diagram", input.files[0]);
    preview.hidden = false;
  });
  $("#diagram-form").addEventListener("submit", (event) => {
    event.preventDefault();
    runPanel(panel, async () => {
      const file = input.files[0];
      need(file, "choose an image first");
      result.replaceChildren();
      meta.textContent = "";
      const form = new FormData();
      form.append("file", file);
      const body = await (await api("/infer", { method: "POST", body: form })).json();
      const text = typeof body.description === "string" ? body.description : JSON.stringify(body);
      const table = parseMarkdownTable(text);
      if (table) {
        result.append(renderTable(table));
      } else {
        const note = document.createElement("p");
        note.className = "note";
        note.textContent = "The model's answer is not a table; its text:";
        const raw = document.createElement("pre");
        raw.dataset.testid = "diagram-raw";
        raw.textContent = text || "(empty)";
        result.append(note, raw);
      }
      const m = body.metadata || {};
      meta.textContent = [m.adapter && `adapter ${m.adapter}`, m.device,
        typeof m.inference_time === "number" && `${m.inference_time.toFixed(2)} s`].filter(Boolean).join(" · ");
    });
  });
}

// ---------------------------------------------------------------- key and start-up

// Checks the key against an authenticated route; the answer shows beside the key. `data-checks` counts
// finished checks, `data-state` is missing | good | bad.
async function checkKey() {
  const status = $("#key-status");
  status.classList.remove("bad", "good");
  status.textContent = "checking…";
  try {
    if (config.auth && !apiKey()) {
      status.textContent = "enter the API key to use the panels";
      status.dataset.state = "missing";
      return;
    }
    await api("/v1/models");
    status.textContent = config.auth ? "key accepted" : "no key needed here";
    status.dataset.state = "good";
    if (config.services.tts) await loadVoices();
  } catch (err) {
    status.textContent = err instanceof ApiError ? `${err.heading}: ${err.message}` : String(err);
    status.dataset.state = "bad";
  } finally {
    status.classList.add(status.dataset.state);
    status.dataset.checks = Number(status.dataset.checks || 0) + 1;
  }
}

async function start() {
  const keyInput = $("#api-key");
  keyInput.value = apiKey();
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, keyInput.value.trim());
    checkKey();
  });
  wireDropZones();
  try {
    const response = await fetch("/playground/config.json");
    if (!response.ok) throw await ApiError.from(response);
    Object.assign(config, await response.json());
  } catch (err) {
    showError($("#global-error"), err);
    return;
  }
  const setups = { aligner: setupAlign, tts: setupSpeech, captioner: setupCaption, diagram: setupDiagram };
  let shown = 0;
  for (const panel of document.querySelectorAll(".panel")) {
    const service = panel.dataset.service;
    if (!config.services[service]) continue;
    setups[service]();
    panel.hidden = false;
    panel.dataset.state = "idle";
    shown++;
  }
  $("#no-panels").hidden = shown > 0;
  document.body.dataset.ready = "true";
  await checkKey();
}

start();
