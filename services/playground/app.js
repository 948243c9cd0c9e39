// The playground: a panel per service over the gateway's public API, plain browser JavaScript (no build,
// no CDN).
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

// The image picked in `input` shown in `preview` (an <img>), or the audio in a player: at once, locally.
function showPicked(input, preview, slot) {
  input.addEventListener("change", () => {
    if (!input.files[0]) return;
    preview.src = objectUrl(slot, input.files[0]);
    preview.hidden = false;
  });
}

function playQuietly(audio) {
  // Browsers may refuse autoplay; the controls are there.
  audio.play().catch(() => {});
}

// ---------------------------------------------------------------- words lighting up as audio plays

const clock = (t) => `${Math.floor(t / 60)}:${(t % 60).toFixed(1).padStart(4, "0")}`;

// `words` ({word, start, end} in seconds of `player`'s audio) as spans; the one being said is lit and those
// said are marked as `player` plays (or is seeked); clicking a word plays from it. `container.dataset.now`
// is the index of the lit word (-1: none) for tests.
function showWords(container, words, player) {
  container.replaceChildren(...words.map((w, i) => {
    const span = document.createElement("span");
    span.className = "word";
    span.dataset.testid = "word";
    span.dataset.index = i;
    span.dataset.start = w.start;
    span.dataset.end = w.end;
    span.title = `${clock(w.start)} – ${clock(w.end)}`;
    span.textContent = w.word;
    return span;
  }).flatMap((span, i) => (i ? [" ", span] : [span])));
  container.dataset.now = -1;
  const update = () => {
    const t = player.currentTime;
    let now = -1;
    for (const span of container.querySelectorAll(".word")) {
      const start = Number(span.dataset.start);
      const said = start <= t;
      span.classList.toggle("spoken", said);
      const lit = said && t < Math.max(Number(span.dataset.end), start + 0.05);
      span.classList.toggle("now", lit);
      if (lit) now = Number(span.dataset.index);
    }
    container.dataset.now = now;
  };
  if (!player.dataset.wordsWired) {
    player.dataset.wordsWired = "1";
    const tick = () => {
      player.wordsUpdate?.();
      if (!player.paused && !player.ended) requestAnimationFrame(tick);
    };
    for (const event of ["timeupdate", "seeked", "loadedmetadata"]) player.addEventListener(event, () => player.wordsUpdate?.());
    player.addEventListener("play", () => requestAnimationFrame(tick));
    container.addEventListener("click", (event) => {
      const span = event.target.closest(".word");
      if (!span) return;
      player.currentTime = Number(span.dataset.start);
      playQuietly(player);
    });
  }
  player.wordsUpdate = update;
  update();
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
  if (segment.needs_review) {  // the aligner's own doubt: shown on the line, with the reasons
    li.classList.add("review");
    li.title = `check this line: ${segment.review.join(", ").replaceAll("_", " ")}`;
  }
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
    if (typeof word.confidence === "number") {
      span.dataset.confidence = word.confidence;
      if (word.confidence < 0.5 || word.aligned === false) span.classList.add("unsure");
      span.title = `confidence ${word.confidence.toFixed(2)}${word.aligned === false ? " · interpolated" : ""}`;
    }
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

// Every format of the alignment shown, written by the server from its JSON answer (POST
// /api/v1/align/convert: no model runs), as downloads named after the song.
const ALIGN_FORMATS = [["lrc", "lrc"], ["lrc_enhanced", "lrc"], ["srt", "srt"], ["vtt", "vtt"], ["ttml", "ttml"],
  ["ass", "ass"], ["json", "json"]];

async function alignDownloads(body, stem) {
  const links = await Promise.all(ALIGN_FORMATS.map(async ([format, extension]) => {
    const response = await api("/api/v1/align/convert", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ segments: body.segments, language: body.language, duration: body.duration,
        review: body.review, format }),
    });
    const a = document.createElement("a");
    a.className = "download";
    a.dataset.testid = `align-download-${format}`;
    a.dataset.format = format;
    a.href = objectUrl(`align-${format}`, await response.blob());
    a.download = `${stem}${format === "lrc_enhanced" ? ".enhanced" : ""}.${extension}`;
    a.textContent = format === "lrc_enhanced" ? "enhanced lrc" : format;
    return a;
  }));
  return links;
}

// Lines a person should check (the aligner's review), as a list of links to them.
function showReview(box, body, list) {
  const review = body.review;
  box.replaceChildren();
  if (!review) return;
  const head = document.createElement("strong");
  head.textContent = review.needs_review
    ? `${review.needs_review} of ${review.lines} lines to check`
    : `all ${review.lines} lines look right`;
  box.append(head);
  if (typeof review.mean_confidence === "number") box.append(` · mean confidence ${review.mean_confidence.toFixed(2)}`);
  for (const index of review.lines_to_review) {
    const seg = body.segments[index];
    const link = document.createElement("button");
    link.type = "button";
    link.className = "review-item";
    link.dataset.testid = "align-review-item";
    link.dataset.index = index;
    link.textContent = `${index + 1}: ${seg.text.trim() || "♪"} (${seg.review.join(", ").replaceAll("_", " ")})`;
    link.addEventListener("click", () => list.children[index]?.click());
    box.append(link);
  }
  for (const extra of Array.isArray(body.extra_audio) ? body.extra_audio : []) {  // verify: sung, not in the lyrics
    const item = document.createElement("span");
    item.className = "extra-audio";
    item.dataset.testid = "align-extra-audio";
    item.textContent = `heard at ${lrcTime(extra.start)}, not in the lyrics: “${extra.text}”`;
    box.append(item);
  }
  box.dataset.count = review.needs_review;
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
    $("#align-downloads").replaceChildren();
    $("#align-review").replaceChildren();
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
      const typed = lines.some((line) => line.trim());
      need(file, "choose a song first");
      need(typed || config.services.asr, "type the lyrics first");
      const form = new FormData();
      form.append("audio", file);
      if (typed) form.append("lyrics", JSON.stringify(lines));  // else the ASR hears them
      if (typed && $("#align-verify").checked) form.append("verify", "true");
      if ($("#align-separate").checked) form.append("separate", "true");
      form.append("format", "json");
      const body = await (await api("/api/v1/align", { method: "POST", body: form })).json();
      need(Array.isArray(body.segments), "unexpected answer: no segments");
      karaoke.segments = body.segments;
      karaoke.active = -2;
      list.replaceChildren(...body.segments.map(renderLine));
      updateHighlight();
      showReview($("#align-review"), body, list);
      const stem = file.name.replace(/\.[^.]+$/, "") || "lyrics";
      const links = await alignDownloads(body, stem);
      $("#align-downloads").replaceChildren("Download: ", ...links);
      const download = $("#align-download");  // the .lrc, also on its own
      download.href = links[0].href;
      download.download = `${stem}.lrc`;
      download.hidden = false;
    });
  });
}

// ---------------------------------------------------------------- speech

const MEDIA_TYPES = { mp3: "audio/mpeg", wav: "audio/wav", opus: "audio/ogg", flac: "audio/flac" };

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
      const timed = $("#tts-timed").checked && Boolean(config.services.aligner);
      const response = await api("/v1/audio/speech", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ model: config.services.tts.model, input, voice, response_format: format,
          ...(timed ? { timestamps: true } : {}) }),
      });
      const words = $("#tts-words");
      words.replaceChildren();
      let blob;
      if (timed) {  // JSON: the audio (base64) and its words
        const body = await response.json();
        need(typeof body.audio === "string" && Array.isArray(body.words), "unexpected answer: no audio or words");
        const bytes = Uint8Array.from(atob(body.audio), (c) => c.charCodeAt(0));
        blob = new Blob([bytes], { type: MEDIA_TYPES[format] || "application/octet-stream" });
        showWords(words, body.words, audio);
      } else {
        blob = await response.blob();
      }
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

// A streamed chat completion: `onDelta(delta)` for each choice delta; the finish reason and usage at the end.
async function readChat(response, onDelta) {
  let finish = null;
  let usage = null;
  for await (const chunk of sseEvents(response)) {
    const choice = (chunk.choices || [])[0];
    if (choice?.delta) onDelta(choice.delta);
    if (choice?.finish_reason) finish = choice.finish_reason;
    if (chunk.usage) usage = chunk.usage;
  }
  need(finish, "the stream ended early");
  return { finish, usage };
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
          ...($("#caption-windows").checked ? { caption_windows: true } : {}),
          messages: [{ role: "user", content: [
            { type: "input_audio", input_audio: { data: await readDataUrl(file), format: extension.toLowerCase() } },
          ] }],
        }),
      });
      const timeline = $("#caption-timeline");
      timeline.replaceChildren();
      const { finish, usage } = await readChat(response, (delta) => {
        if (delta.window) {  // caption_windows: one delta per window, with its times
          const li = document.createElement("li");
          li.dataset.testid = "caption-window";
          li.dataset.start = delta.window.start;
          li.dataset.end = delta.window.end;
          const span = document.createElement("span");
          span.className = "span";
          span.textContent = `${clock(delta.window.start)} – ${clock(delta.window.end)}`;
          const text = document.createElement("span");
          text.className = "text";
          text.textContent = String(delta.content || "").replace(/^\s*\[[^\]]*\]\s*/, "").trim();
          li.append(span, text);
          timeline.append(li);
        } else if (delta.content) {
          output.textContent += delta.content;
        }
      });
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
  const result = $("#diagram-result");
  const meta = $("#diagram-meta");
  showPicked(input, $("#diagram-preview"), "diagram");
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

// ---------------------------------------------------------------- transcription: a file, or the microphone

function setupTranscription() {
  const panel = $("#panel-asr");
  const input = $("#asr-audio");
  const player = $("#asr-player");
  const output = $("#asr-text");
  const words = $("#asr-words");
  const meta = $("#asr-meta");
  showPicked(input, player, "transcribed");
  $("#asr-form").addEventListener("submit", (event) => {
    event.preventDefault();
    runPanel(panel, async () => {
      const file = input.files[0];
      need(file, "choose an audio file first (or record)");
      output.textContent = "";
      words.replaceChildren();
      meta.textContent = "";
      const form = (fields) => {
        const f = new FormData();
        f.append("file", file);
        f.append("model", config.services.asr.model);
        for (const [k, v] of Object.entries(fields)) f.append(k, v);
        return f;
      };
      // The text as it is decoded: OpenAI's transcription stream.
      const response = await api("/v1/audio/transcriptions", { method: "POST", body: form({ stream: "true" }) });
      let usage = null;
      for await (const event of sseEvents(response)) {
        if (event.type === "transcript.text.delta") output.textContent += event.delta;
        if (event.type === "transcript.text.done") {
          output.textContent = event.text;
          usage = event.usage;
        }
      }
      need(usage, "the transcription stream ended early");
      meta.textContent = `${usage.input_tokens} tokens in · ${usage.output_tokens} out`;
      if ($("#asr-timed").checked && config.services.aligner) {  // then each word with its time
        const body = await (await api("/v1/audio/transcriptions", { method: "POST", body: form({
          response_format: "verbose_json", "timestamp_granularities[]": "word" }) })).json();
        showWords(words, body.words || [], player);
        meta.textContent += ` · ${(body.words || []).length} words timed`;
      }
    });
  });
  $("#asr-record").addEventListener("click", () => (recorder.socket ? stopRecording() : startRecording()));
}

// Recording: the microphone at 24 kHz (the browser resamples), 16-bit PCM sent to the realtime endpoint
// in OpenAI's Realtime events, turns cut by the server's VAD; each turn's text appears as it is decoded.
const recorder = { socket: null, context: null, stream: null, pending: 0 };

function realtimeUrl() {
  const url = new URL("/v1/realtime?intent=transcription", location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

function turnItem(list, id) {
  let li = list.querySelector(`li[data-item="${CSS.escape(id)}"]`);
  if (!li) {
    li = document.createElement("li");
    li.dataset.testid = "asr-turn";
    li.dataset.item = id;
    li.className = "pending";
    const span = document.createElement("span");
    span.className = "span";
    const text = document.createElement("span");
    text.className = "text";
    li.append(span, text);
    list.append(li);
  }
  return li;
}

function int16Base64(floats) {
  const pcm = new Int16Array(floats.length);
  for (let i = 0; i < floats.length; i++) pcm[i] = Math.max(-1, Math.min(1, floats[i])) * 0x7fff;
  const bytes = new Uint8Array(pcm.buffer);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

async function startRecording() {
  const panel = $("#panel-asr");
  const button = $("#asr-record");
  const list = $("#asr-turns");
  const errorBox = $(".error", panel);
  errorBox.hidden = true;
  try {
    need(navigator.mediaDevices?.getUserMedia, "this page cannot use a microphone here (it needs https or localhost)");
    recorder.stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1 } });
  } catch (err) {
    showError(errorBox, err instanceof ApiError ? err : new ApiError(`microphone: ${err.message}`));
    return;
  }
  list.replaceChildren();
  panel.dataset.turns = 0;
  const protocols = ["realtime", ...(apiKey() ? [`openai-insecure-api-key.${apiKey()}`] : [])];
  const socket = new WebSocket(realtimeUrl(), protocols);
  recorder.socket = socket;
  button.textContent = "Stop";
  button.classList.add("on");
  panel.dataset.recording = "on";
  socket.onopen = () => {
    socket.send(JSON.stringify({ type: "session.update", session: { type: "transcription", audio: { input: {
      format: { type: "audio/pcm", rate: 24000 }, transcription: { model: config.services.asr.model },
      turn_detection: { type: "server_vad", threshold: 0.5, silence_duration_ms: 600, prefix_padding_ms: 300 } } } } }));
    recorder.context = new AudioContext({ sampleRate: 24000 });
    const source = recorder.context.createMediaStreamSource(recorder.stream);
    const tap = recorder.context.createScriptProcessor(4096, 1, 1);
    tap.onaudioprocess = (e) => {
      if (socket.readyState === WebSocket.OPEN) {
        socket.send(JSON.stringify({ type: "input_audio_buffer.append", audio: int16Base64(e.inputBuffer.getChannelData(0)) }));
      }
    };
    source.connect(tap);
    tap.connect(recorder.context.destination);  // a processor only runs when connected; it writes silence
  };
  socket.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.type === "input_audio_buffer.speech_started") {
      turnItem(list, event.item_id).querySelector(".span").textContent = clock(event.audio_start_ms / 1000);
    } else if (event.type === "input_audio_buffer.committed") {
      recorder.pending++;
      turnItem(list, event.item_id);
    } else if (event.type === "conversation.item.input_audio_transcription.delta") {
      turnItem(list, event.item_id).querySelector(".text").textContent += event.delta;
    } else if (event.type === "conversation.item.input_audio_transcription.completed"
               || event.type === "conversation.item.input_audio_transcription.failed") {
      const li = turnItem(list, event.item_id);
      li.classList.remove("pending");
      if (event.transcript !== undefined) li.querySelector(".text").textContent = event.transcript;
      if (event.error) li.querySelector(".text").textContent = `(failed: ${event.error.message})`;
      recorder.pending--;
      panel.dataset.turns = Number(panel.dataset.turns || 0) + 1;
      if (!recorder.stream && recorder.pending <= 0) socket.close();  // stopped, and nothing left to hear
    } else if (event.type === "error") {
      showError(errorBox, new ApiError(event.error.message, { type: event.error.type, code: event.error.code,
        param: event.error.param }));
    }
  };
  socket.onclose = (event) => {
    if (event.code !== 1000 && event.code !== 1005 && recorder.socket === socket && recorder.stream) {
      showError(errorBox, new ApiError(`the realtime connection closed (${event.code}${event.reason ? ": " + event.reason : ""}); is the key right?`, { type: "network_error" }));
    }
    if (recorder.socket === socket) finishRecording();
  };
}

function stopMicrophone() {
  recorder.stream?.getTracks().forEach((t) => t.stop());
  recorder.stream = null;
  recorder.context?.close().catch(() => {});
  recorder.context = null;
}

// Stop listening; the socket stays open until the turns already committed are transcribed.
function stopRecording() {
  const socket = recorder.socket;
  stopMicrophone();
  $("#asr-record").disabled = true;
  if (!socket || socket.readyState !== WebSocket.OPEN || recorder.pending <= 0) socket?.close();
}

function finishRecording() {
  stopMicrophone();
  recorder.socket = null;
  recorder.pending = 0;
  const button = $("#asr-record");
  button.textContent = "Record";
  button.classList.remove("on");
  button.disabled = false;
  $("#panel-asr").dataset.recording = "off";
}

// ---------------------------------------------------------------- ask about an image (VL, streamed)

function setupVision() {
  const panel = $("#panel-vl");
  const input = $("#vl-file");
  const answer = $("#vl-answer");
  const meta = $("#vl-meta");
  showPicked(input, $("#vl-preview"), "vl");
  $("#vl-form").addEventListener("submit", (event) => {
    event.preventDefault();
    runPanel(panel, async () => {
      const file = input.files[0];
      const question = $("#vl-question").value.trim();
      need(question, "type a question first");
      answer.textContent = "";
      meta.textContent = "";
      const content = [{ type: "text", text: question }];
      if (file) content.unshift({ type: "image_url", image_url: { url: await readDataUrl(file) } });
      const response = await api("/v1/chat/completions", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ model: config.services.vl.model, stream: true, stream_options: { include_usage: true },
          messages: [{ role: "user", content }] }),
      });
      const { finish, usage } = await readChat(response, (delta) => {
        if (delta.content) answer.textContent += delta.content;
      });
      meta.textContent = [`finish: ${finish}`, usage && `${usage.completion_tokens} tokens`].filter(Boolean).join(" · ");
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
  const setups = { aligner: setupAlign, asr: setupTranscription, tts: setupSpeech, captioner: setupCaption,
    diagram: setupDiagram, vl: setupVision };
  for (const option of document.querySelectorAll("[data-needs]")) option.hidden = !config.services[option.dataset.needs];
  for (const option of document.querySelectorAll("[data-feature]")) option.hidden = !config.features?.[option.dataset.feature];
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
