// The lmforge playground: chat through the server's own /v1/chat/completions stream.
"use strict";

const $ = (id) => document.getElementById(id);
const history = [];
let controller = null;
let modelId = null;

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function apiError(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON */ }
  return "the server answered " + response.status + ".";
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  $("messages").appendChild(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return div;
}

function meta(div, text) {
  const span = document.createElement("span");
  span.className = "meta";
  span.textContent = text;
  div.appendChild(span);
}

async function loadModel() {
  try {
    const response = await fetch("/playground/info");
    if (!response.ok) {
      $("model").textContent = await apiError(response);
      return;
    }
    const info = await response.json();
    modelId = info.model;
    let text = info.model + " · context " + info.context_length + " tokens";
    if (info.needs_key && !$("api_key").value.trim()) {
      text += " · this server needs its API key (Settings)";
    }
    $("model").textContent = text;
  } catch (err) {
    $("model").textContent = "the server cannot be reached (" + err.message + ").";
  }
}

function request() {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  const body = {
    model: modelId,
    messages: messages.concat(history),
    stream: true,
    stream_options: { include_usage: true },
    temperature: Number($("temperature").value),
    top_p: Number($("top_p").value),
    presence_penalty: Number($("presence_penalty").value),
    frequency_penalty: Number($("frequency_penalty").value),
  };
  const stops = $("stop_words").value.split("\n").filter((s) => s.length > 0);
  if (stops.length) body.stop = stops;
  if ($("max_tokens").value !== "") body.max_tokens = Number($("max_tokens").value);
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  if ($("top_k").value !== "") body.top_k = Number($("top_k").value);
  if (Number($("min_p").value) > 0) body.min_p = Number($("min_p").value);
  if (Number($("repetition_penalty").value) !== 1) {
    body.repetition_penalty = Number($("repetition_penalty").value);
  }
  return body;
}

// Read server-sent events ("data: {...}\n\n") from a streamed response, calling onEvent per event.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data));
      }
    }
  }
}

function busy(on) {
  $("send").disabled = on;
  $("stop").disabled = !on;
}

async function send(text) {
  if (!modelId) await loadModel();
  if (!modelId) return;
  history.push({ role: "user", content: text });
  bubble("user", text);
  const div = bubble("assistant", "");
  let answer = "";
  let finish = null;
  let usage = null;
  const started = performance.now();
  let first = null;
  controller = new AbortController();
  busy(true);
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(request()), signal: controller.signal,
    });
    if (!response.ok) throw new Error(await apiError(response));
    await readEvents(response, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        const piece = (choice.delta && choice.delta.content) || "";
        if (piece && first === null) first = performance.now();
        answer += piece;
        if (choice.finish_reason) finish = choice.finish_reason;
      }
      div.textContent = answer;
      $("messages").scrollTop = $("messages").scrollHeight;
    });
  } catch (err) {
    if (err.name === "AbortError") {
      finish = "stopped";
    } else {
      div.remove();
      history.pop();
      bubble("error", err.message);
      return;
    }
  } finally {
    busy(false);
    controller = null;
  }
  history.push({ role: "assistant", content: answer });
  if (!answer) div.textContent = "(empty answer: the model ended at once)";
  const seconds = (performance.now() - started) / 1000;
  const parts = [];
  if (first !== null) parts.push("first token " + ((first - started) / 1000).toFixed(2) + " s");
  if (usage) {
    parts.push(usage.completion_tokens + " tokens");
    const decode = first !== null ? (performance.now() - first) / 1000 : seconds;
    if (usage.completion_tokens > 1 && decode > 0) {
      parts.push(((usage.completion_tokens - 1) / decode).toFixed(1) + " tokens/s");
    }
  }
  if (finish) parts.push("finish: " + finish);
  meta(div, parts.join(" · "));
  $("stats").textContent = parts.join(" · ");
}

async function showReport() {
  $("report-note").textContent = "loading…";
  try {
    const response = await fetch("/playground/report", { headers: headers() });
    if (!response.ok) {
      $("report-note").textContent = await apiError(response);
      $("report").srcdoc = "";
      return;
    }
    $("report-note").textContent = "";
    $("report").srcdoc = await response.text();
  } catch (err) {
    $("report-note").textContent = "the report card cannot be loaded (" + err.message + ").";
  }
}

function tab(name) {
  const chat = name === "chat";
  $("chat-view").hidden = !chat;
  $("report-view").hidden = chat;
  $("tab-chat").classList.toggle("active", chat);
  $("tab-report").classList.toggle("active", !chat);
  if (!chat) showReport();
}

function init() {
  const saved = localStorage.getItem("lmforge-api-key");
  if (saved) $("api_key").value = saved;
  $("api_key").addEventListener("change", () => {
    localStorage.setItem("lmforge-api-key", $("api_key").value.trim());
    loadModel();
  });
  for (const id of ["temperature", "top_p"]) {
    $(id).addEventListener("input", () => { $(id + "-value").textContent = $(id).value; });
  }
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("input").value.trim();
    if (!text || controller) return;
    $("input").value = "";
    send(text);
  });
  $("input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => { if (controller) controller.abort(); });
  $("clear").addEventListener("click", () => {
    history.length = 0;
    $("messages").textContent = "";
    $("stats").textContent = "";
  });
  $("tab-chat").addEventListener("click", () => tab("chat"));
  $("tab-report").addEventListener("click", () => tab("report"));
  loadModel();
}

init();
