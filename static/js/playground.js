// The playground: chat with a profile over /v1/ws/chat, save each finished turn.
// Protocol (inference/consumers.py): send {type: "chat", id, body} or {type: "stop", id};
// receive {type: "delta", id, text}, then {type: "done", id, finish_reason, usage} or {type: "error", id, error}.
// Speech: {type: "transcribe", id, model, audio (base64)} → {type: "transcript", id, text};
// {type: "speech", id, model, input} → {type: "audio", id, format, data (base64)}.
// Answers are markdown, rendered as they stream (markdown-it, raw HTML off), then sanitised
// (DOMPurify) before they touch the DOM; code blocks are highlighted (highlight.js).
(() => {
  "use strict";
  const root = document.getElementById("playground");
  if (!root) return;
  const $ = (id) => document.getElementById(id);
  const ui = {
    profile: $("pg-profile"),
    temperature: $("pg-temperature"),
    topP: $("pg-top-p"),
    maxTokens: $("pg-max-tokens"),
    thinking: $("pg-thinking"),
    system: $("pg-system"),
    tools: $("pg-tools"),
    toolChoice: $("pg-tool-choice"),
    transcript: $("transcript"),
    empty: $("pg-empty"),
    composer: $("pg-composer"),
    input: $("pg-input"),
    send: $("pg-send"),
    stop: $("pg-stop"),
    status: $("pg-status"),
    attach: $("pg-attach"),
    attachLabel: $("pg-attach-label"),
    attachments: $("pg-attachments"),
    stt: $("pg-stt"),
    record: $("pg-record"),
    audioFile: $("pg-audio-file"),
    tts: $("pg-tts"),
  };
  const saved = JSON.parse($("pg-conversation").textContent);
  const state = { id: saved.id, messages: [], socket: null, turn: null, seq: 0, attachments: [], pending: new Map() };
  const MAX_IMAGES = 4;
  const MAX_IMAGE_BYTES = 3 * 1024 * 1024;
  const MAX_SOCKET_CHARS = 15 * 1024 * 1024; // the server takes 16 MiB per socket message
  const IMAGE_TYPES = ["image/png", "image/jpeg", "image/gif", "image/webp"];
  const MAX_AUDIO_BYTES = 10 * 1024 * 1024;

  // ---- markdown, sanitised -----------------------------------------------------------------
  const md =
    window.markdownit &&
    window.markdownit({
      html: false, // raw HTML in answers is shown as text, never parsed
      linkify: true,
      breaks: true,
      highlight(code, lang) {
        if (!window.hljs) return "";
        try {
          if (lang && hljs.getLanguage(lang)) return hljs.highlight(code, { language: lang, ignoreIllegals: true }).value;
          return hljs.highlightAuto(code).value;
        } catch {
          return "";
        }
      },
    });
  const PURIFY = {
    USE_PROFILES: { html: true },
    FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "iframe", "object", "embed", "svg", "math"],
    FORBID_ATTR: ["style", "srcset"],
    ALLOWED_URI_REGEXP: /^(?:https?:|mailto:|#)/i,
  };
  if (window.DOMPurify) {
    DOMPurify.addHook("afterSanitizeAttributes", (node) => {
      if (node.tagName === "A") {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer nofollow");
      }
      // No request to anywhere just for showing an answer: remote images become their alt text.
      if (node.tagName === "IMG" && !/^data:image\//.test(node.getAttribute("src") || "")) {
        node.removeAttribute("src");
      }
    });
  }
  const rich = Boolean(md && window.DOMPurify);

  async function copyText(text) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch {
      const area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.style.position = "fixed";
      area.style.opacity = "0";
      document.body.append(area);
      area.select();
      const ok = document.execCommand("copy");
      area.remove();
      return ok;
    }
  }

  function copyButton(label, text, ariaLabel) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "link-button";
    button.textContent = label;
    if (ariaLabel) button.setAttribute("aria-label", ariaLabel);
    button.addEventListener("click", async () => {
      const ok = await copyText(typeof text === "function" ? text() : text);
      button.textContent = ok ? "Copied" : "Copy failed";
      setTimeout(() => (button.textContent = label), 1500);
    });
    return button;
  }

  function renderMarkdown(el, text) {
    if (!rich) {
      el.textContent = text;
      el.classList.add("plain");
      return;
    }
    el.innerHTML = DOMPurify.sanitize(md.render(text), PURIFY);
    for (const img of el.querySelectorAll("img:not([src])")) {
      const alt = img.getAttribute("alt");
      img.replaceWith(`[image${alt ? `: ${alt}` : ""}]`);
    }
    for (const pre of el.querySelectorAll("pre")) {
      const code = pre.querySelector("code");
      const lang = ((code && code.className.match(/language-([\w+#.-]+)/)) || [])[1] || "";
      code?.classList.add("hljs");
      const bar = document.createElement("div");
      bar.className = "code-bar";
      const name = document.createElement("span");
      name.textContent = lang || "code";
      bar.append(name, copyButton("Copy code", () => (code || pre).textContent));
      const block = document.createElement("div");
      block.className = "code-block";
      pre.replaceWith(block);
      block.append(bar, pre);
    }
  }

  // ---- small helpers -------------------------------------------------------------------------
  function csrfToken() {
    try {
      return JSON.parse(document.body.getAttribute("hx-headers"))["X-CSRFToken"];
    } catch {
      return "";
    }
  }

  function setStatus(text, isError = false) {
    ui.status.textContent = text;
    ui.status.classList.toggle("error", isError);
  }

  function profileKind() {
    return ui.profile.selectedOptions[0]?.dataset.kind || "llm";
  }

  // "<think>reasoning</think>answer". Some templates open the tag in the prompt, so the
  // output may hold only the closing one.
  function splitThink(raw) {
    const open = raw.indexOf("<think>");
    const close = raw.indexOf("</think>", open === -1 ? 0 : open);
    if (open === -1 && close === -1) return { reasoning: "", content: raw, thinking: false };
    if (close === -1) {
      return { reasoning: raw.slice(open + 7), content: raw.slice(0, open), thinking: true };
    }
    const start = open === -1 ? 0 : open + 7;
    const before = open === -1 ? "" : raw.slice(0, open);
    return { reasoning: raw.slice(start, close), content: before + raw.slice(close + 8), thinking: false };
  }

  // Reasoning the server sends apart (delta.reasoning), plus any left inline in <think> tags.
  function turnParts(turn) {
    const parts = splitThink(turn.raw);
    if (turn.reasoning) parts.reasoning = turn.reasoning + parts.reasoning;
    parts.thinking = parts.thinking || (Boolean(turn.reasoning) && !parts.content.trim());
    return parts;
  }

  function usageText(m) {
    const parts = [];
    if (m.ttft_ms !== undefined) parts.push(`TTFT ${m.ttft_ms < 1000 ? `${Math.round(m.ttft_ms)} ms` : `${(m.ttft_ms / 1000).toFixed(2)} s`}`);
    if (m.tokens_per_s !== undefined) parts.push(`${m.tokens_per_s.toFixed(1)} tokens/s`);
    if (m.usage) {
      parts.push(`${m.usage.completion_tokens} tokens`);
      const cached = (m.usage.prompt_tokens_details || {}).cached_tokens;
      parts.push(`prompt ${m.usage.prompt_tokens}${cached ? ` (${cached} cached)` : ""}`);
    }
    if (m.finish_reason === "tool_calls") parts.push("called tools");
    if (m.finish_reason === "cancelled") parts.push("stopped");
    else if (m.finish_reason === "length") parts.push("hit max tokens");
    return parts.join(" · ");
  }

  // ---- the transcript ------------------------------------------------------------------------
  // One transcript entry; returns a handle that re-renders it as text streams in.
  function addEntry(role, label) {
    ui.empty?.remove();
    const el = document.createElement("article");
    el.className = `msg ${role}`;
    const who = document.createElement("div");
    who.className = "who";
    who.textContent = label;
    const images = document.createElement("div");
    images.className = "images";
    images.hidden = true;
    const reasoning = document.createElement("details");
    reasoning.className = "reasoning";
    reasoning.hidden = true;
    const summary = document.createElement("summary");
    summary.textContent = "Reasoning";
    const reasoningText = document.createElement("div");
    reasoning.append(summary, reasoningText);
    const content = document.createElement("div");
    content.className = role === "assistant" ? "content markdown" : "content";
    const calls = document.createElement("ul");
    calls.className = "tool-calls";
    calls.hidden = true;
    const footer = document.createElement("div");
    footer.className = "msg-footer";
    const meta = document.createElement("div");
    meta.className = "meta";
    const actions = document.createElement("div");
    actions.className = "actions";
    footer.append(meta, actions);
    el.append(who, images, reasoning, content, calls, footer);
    ui.transcript.append(el);
    let frame = 0;
    let latest = "";
    const paint = () => {
      frame = 0;
      if (role === "assistant") renderMarkdown(content, latest);
      else content.textContent = latest;
    };
    const view = {
      el,
      content,
      actions,
      show(text, thinkingText = "", thinking = false, now = false) {
        latest = text.trim();
        if (now) {
          if (frame) cancelAnimationFrame(frame);
          paint();
        } else if (!frame) {
          frame = requestAnimationFrame(paint); // at most one markdown render per frame
        }
        reasoning.hidden = !thinkingText.trim();
        reasoningText.textContent = thinkingText.trim();
        summary.textContent = thinking ? "Reasoning…" : "Reasoning";
        if (thinking) reasoning.open = true;
        ui.transcript.scrollTop = ui.transcript.scrollHeight;
      },
      images(urls) {
        images.replaceChildren(
          ...urls.map((url, i) => {
            const img = document.createElement("img");
            img.src = url;
            img.alt = `Attached image ${i + 1}`;
            return img;
          }),
        );
        images.hidden = urls.length === 0;
      },
      tools(list) {
        calls.replaceChildren(
          ...list.map((c) => {
            const li = document.createElement("li");
            const label = document.createElement("span");
            label.className = "hint";
            label.textContent = "Tool call ";
            const code = document.createElement("code");
            code.textContent = `${c.name || "?"}(${c.arguments || ""})`;
            li.append(label, code);
            return li;
          }),
        );
        calls.hidden = list.length === 0;
      },
      meta(text) {
        meta.textContent = text;
      },
      error(text) {
        const p = document.createElement("p");
        p.className = "error";
        p.setAttribute("role", "alert");
        p.textContent = text;
        el.insertBefore(p, footer);
        el.classList.add("failed");
      },
    };
    return view;
  }

  function actionButton(label, onClick, ariaLabel) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "link-button";
    button.textContent = label;
    if (ariaLabel) button.setAttribute("aria-label", ariaLabel);
    button.addEventListener("click", onClick);
    return button;
  }

  function showMessage(m, index) {
    const view = addEntry(m.role, m.role === "user" ? "You" : state.profileLabel || "Assistant");
    view.show(m.content, m.reasoning || "", false, true);
    if (m.images) view.images(m.images);
    if (m.tool_calls) view.tools(m.tool_calls);
    if (m.role === "assistant") view.meta(usageText(m));
    const who = m.role === "user" ? "your question" : "the answer";
    view.actions.append(copyButton("Copy", m.content, `Copy ${who}`));
    if (m.role === "user") {
      view.actions.append(actionButton("Edit", () => editMessage(index, view), "Edit this question"));
    } else if (index === state.messages.length - 1) {
      view.actions.append(actionButton("Regenerate", regenerate, "Regenerate the answer"));
    }
    if (m.role === "assistant" && ui.tts && m.content.trim()) {
      view.actions.append(actionButton("Play", () => speak(view), "Read the answer aloud"));
    }
    return view;
  }

  function renderAll() {
    ui.transcript.replaceChildren();
    if (!state.messages.length && ui.empty) ui.transcript.append(ui.empty);
    return state.messages.map((m, i) => showMessage(m, i)).pop();
  }

  function editMessage(index, view) {
    if (state.turn) return;
    const m = state.messages[index];
    const form = document.createElement("form");
    form.className = "edit";
    const area = document.createElement("textarea");
    area.rows = Math.min(10, Math.max(2, m.content.split("\n").length));
    area.value = m.content;
    area.setAttribute("aria-label", "Edited question");
    const buttons = document.createElement("div");
    buttons.className = "edit-actions";
    const save = document.createElement("button");
    save.type = "submit";
    save.textContent = "Save & submit";
    const cancel = actionButton("Cancel", () => renderAll());
    buttons.append(save, cancel);
    form.append(area, buttons);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const text = area.value.trim();
      if (!text || state.turn) return;
      // Everything after the edited message is dropped: the chat goes on from the new text.
      state.messages = state.messages.slice(0, index);
      if (!state.messages.some((x) => x.role === "user")) state.retitle = true; // the first question changed
      renderAll();
      send(text, m.images || []);
    });
    area.addEventListener("keydown", (event) => {
      if (event.key === "Escape") renderAll();
    });
    view.content.replaceWith(form);
    view.actions.hidden = true;
    area.focus();
  }

  function regenerate() {
    if (state.turn) return;
    const last = state.messages[state.messages.length - 1];
    if (!last || last.role !== "assistant") return;
    state.messages.pop();
    renderAll();
    ask();
  }

  // ---- settings ------------------------------------------------------------------------------
  function applyProfileDefaults() {
    const option = ui.profile.selectedOptions[0];
    const defaults = option ? JSON.parse(option.dataset.defaults || "{}") : {};
    const hint = (key) => (defaults[key] !== undefined ? `${defaults[key]} (profile)` : "model default");
    ui.temperature.placeholder = hint("temperature");
    ui.topP.placeholder = hint("top_p");
    ui.maxTokens.placeholder = hint("max_tokens");
    ui.system.placeholder = option?.dataset.system || "None: the profile's system prompt, if any, applies.";
    const vision = profileKind() === "vision";
    ui.attachLabel.hidden = !vision;
    if (!vision && state.attachments.length) {
      state.attachments = [];
      renderAttachments();
      setStatus("Images were removed: this profile reads text only.");
    }
  }

  function number(input) {
    const value = input.value.trim();
    return value === "" ? undefined : Number(value);
  }

  // What a saved chat keeps besides its messages (mlxmanager/playground/schemas.py ChatSettings).
  function chatSettings() {
    const settings = {
      temperature: number(ui.temperature),
      top_p: number(ui.topP),
      max_tokens: number(ui.maxTokens),
      thinking: ui.thinking.value,
      tools: ui.tools.value.trim(),
      tool_choice: ui.toolChoice.value,
    };
    for (const [key, value] of Object.entries(settings)) if (value === undefined || Number.isNaN(value)) delete settings[key];
    return settings;
  }

  function restoreSettings(settings) {
    const set = (input, value) => {
      if (value !== undefined && value !== null) input.value = String(value);
    };
    set(ui.temperature, settings.temperature);
    set(ui.topP, settings.top_p);
    set(ui.maxTokens, settings.max_tokens);
    set(ui.thinking, settings.thinking);
    set(ui.tools, settings.tools);
    set(ui.toolChoice, settings.tool_choice);
    if (settings.tools) ui.tools.closest("details").open = true;
  }

  async function problemText(response) {
    try {
      const body = await response.json();
      return body.detail || body.title || `HTTP ${response.status}`;
    } catch {
      return `HTTP ${response.status}`;
    }
  }

  // ---- the socket ----------------------------------------------------------------------------
  // A fresh short-lived token for every connection: it only has to be valid when the socket opens.
  async function connect() {
    if (state.socket && state.socket.readyState === WebSocket.OPEN) return state.socket;
    const response = await fetch(root.dataset.tokenUrl, {
      method: "POST",
      headers: { "X-CSRFToken": csrfToken() },
      credentials: "same-origin",
    });
    if (!response.ok) throw new Error(`Could not get a chat token: ${await problemText(response)}`);
    const { token } = await response.json();
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}${root.dataset.wsPath}?token=${encodeURIComponent(token)}`);
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onclose = (e) => reject(new Error(e.code === 4401 ? "The chat socket refused the login; reload the page." : "Could not connect to the chat socket."));
    });
    ws.onmessage = onSocketMessage;
    ws.onclose = () => {
      if (state.socket === ws) state.socket = null;
      if (state.turn) finish(state.turn, { error: "The connection to the server closed." });
      for (const [, pending] of state.pending) pending.reject(new Error("The connection to the server closed."));
      state.pending.clear();
    };
    state.socket = ws;
    return ws;
  }

  // A one-shot request over the socket (speech): resolves with the server's answer.
  async function request(message) {
    const ws = await connect();
    const id = `req-${Date.now()}-${++state.seq}`;
    return new Promise((resolve, reject) => {
      state.pending.set(id, { resolve, reject });
      ws.send(JSON.stringify({ ...message, id }));
    });
  }

  function onSocketMessage(event) {
    const msg = JSON.parse(event.data);
    const pending = state.pending.get(msg.id);
    if (pending) {
      state.pending.delete(msg.id);
      if (msg.type === "error") pending.reject(new Error((msg.error && msg.error.message) || "The request failed."));
      else pending.resolve(msg);
      return;
    }
    const turn = state.turn;
    if (!turn || msg.id !== turn.id) return;
    if (msg.type === "delta") {
      if (turn.first === undefined) turn.first = performance.now();
      turn.raw += msg.text || "";
      turn.reasoning += msg.reasoning || "";
      for (const piece of msg.tool_calls || []) {
        const call = (turn.calls[piece.index] ||= { id: null, name: "", arguments: "" });
        if (piece.id) call.id = piece.id;
        if (piece.name) call.name = piece.name;
        call.arguments += piece.arguments || "";
      }
      const parts = turnParts(turn);
      turn.view.show(parts.content, parts.reasoning, parts.thinking);
      if (turn.calls.length) turn.view.tools(turn.calls.filter(Boolean));
    } else if (msg.type === "done") {
      finish(turn, { finish_reason: msg.finish_reason, usage: msg.usage });
    } else if (msg.type === "error") {
      finish(turn, { error: (msg.error && msg.error.message) || "The request failed." });
    }
  }

  function setBusy(busy) {
    ui.send.disabled = busy;
    ui.stop.disabled = !busy;
    root.classList.toggle("busy", busy);
  }

  function wireMessage(m) {
    if (!m.images || !m.images.length) return { role: m.role, content: m.content };
    const parts = [{ type: "text", text: m.content }];
    for (const url of m.images) parts.push({ type: "image_url", image_url: { url } });
    return { role: m.role, content: parts };
  }

  function chatBody() {
    const messages = state.messages.map(wireMessage);
    const system = ui.system.value.trim();
    if (system) messages.unshift({ role: "system", content: system });
    const body = { model: ui.profile.value, messages };
    const params = { temperature: number(ui.temperature), top_p: number(ui.topP), max_tokens: number(ui.maxTokens) };
    for (const [key, value] of Object.entries(params)) if (value !== undefined) body[key] = value;
    if (ui.thinking.value) body.chat_template_kwargs = { enable_thinking: ui.thinking.value === "on" };
    const tools = toolsValue();
    if (tools) {
      body.tools = tools;
      body.tool_choice = ui.toolChoice.value;
    }
    return body;
  }

  // The Tools box: empty, or a JSON list of OpenAI tool definitions. Throws a readable error.
  function toolsValue() {
    const text = ui.tools.value.trim();
    if (!text) return null;
    let tools;
    try {
      tools = JSON.parse(text);
    } catch (err) {
      throw new Error(`Tools must be JSON: ${err.message}`);
    }
    if (!Array.isArray(tools)) throw new Error("Tools must be a JSON list of tool definitions.");
    return tools;
  }

  // ---- a turn --------------------------------------------------------------------------------
  function send(text, images) {
    if (state.turn) return;
    if (!ui.profile.value) {
      setStatus("Create a profile first.", true);
      return;
    }
    try {
      toolsValue();
    } catch (err) {
      setStatus(err.message, true);
      if (!ui.input.value) ui.input.value = text; // give the message back to send again
      return;
    }
    const user = { role: "user", content: text };
    if (images && images.length) user.images = images;
    state.messages.push(user);
    renderAll();
    ask();
  }

  // Answer the transcript as it stands (its last message is the user's).
  async function ask() {
    state.profileLabel = ui.profile.value;
    const turn = { id: `turn-${Date.now()}-${++state.seq}`, raw: "", reasoning: "", calls: [], view: addEntry("assistant", ui.profile.value) };
    turn.view.meta("…");
    state.turn = turn;
    setBusy(true);
    setStatus("");
    try {
      const body = chatBody();
      const ws = await connect();
      const message = JSON.stringify({ type: "chat", id: turn.id, body });
      if (message.length > MAX_SOCKET_CHARS) {
        throw new Error("This chat's images are too large to send (16 MB per message): start a new chat, or attach smaller images.");
      }
      turn.start = performance.now();
      ws.send(message);
    } catch (err) {
      finish(turn, { error: err.message });
    }
  }

  function timings(turn, usage) {
    const out = {};
    if (turn.start === undefined || turn.first === undefined) return out;
    out.ttft_ms = Math.max(0, Math.round(turn.first - turn.start));
    const seconds = (performance.now() - turn.first) / 1000;
    const tokens = usage ? usage.completion_tokens : 0;
    // Decode speed: the tokens after the first, over the time after the first.
    if (tokens > 1 && seconds > 0.001) out.tokens_per_s = Math.round(((tokens - 1) / seconds) * 10) / 10;
    return out;
  }

  function finish(turn, result) {
    if (state.turn !== turn) return;
    state.turn = null;
    setBusy(false);
    const parts = turnParts(turn);
    if (result.error) {
      turn.view.meta("");
      turn.view.error(result.error);
      if (!turn.raw && !turn.reasoning) {
        // Nothing came back: take the question out of the history and give it back to edit.
        const question = state.messages.pop();
        if (question && !ui.input.value) ui.input.value = question.content;
        if (question && question.images && !state.attachments.length) {
          state.attachments = question.images.map((url, i) => ({ url, name: `image ${i + 1}` }));
          renderAttachments();
        }
        turn.view.el.previousElementSibling?.remove(); // the question's entry
        return;
      }
    }
    const answer = { role: "assistant", content: parts.content.trim() };
    if (parts.reasoning.trim()) answer.reasoning = parts.reasoning.trim();
    const calls = turn.calls.filter(Boolean);
    if (calls.length) answer.tool_calls = calls;
    if (result.usage) answer.usage = result.usage;
    answer.finish_reason = result.finish_reason || "error";
    Object.assign(answer, timings(turn, result.usage));
    state.messages.push(answer);
    // Re-render the finished answer with its actions (copy, regenerate, play).
    const last = renderAll();
    if (result.error && last) last.error(result.error);
    save();
  }

  async function save() {
    const messages = [...state.messages];
    const system = ui.system.value.trim();
    if (system) messages.unshift({ role: "system", content: system });
    const url = state.id ? `${root.dataset.api}/${state.id}` : root.dataset.api;
    try {
      const response = await fetch(url, {
        method: state.id ? "PATCH" : "POST",
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
        credentials: "same-origin",
        // An empty title is the first question's again (after that question was edited).
        body: JSON.stringify({ profile_name: ui.profile.value, messages, settings: chatSettings(), ...(state.retitle ? { title: "" } : {}) }),
      });
      if (!response.ok) {
        setStatus(`Not saved: ${await problemText(response)}`, true);
        return;
      }
      const conversation = await response.json();
      state.retitle = false;
      if (!state.id) {
        state.id = conversation.id;
        history.replaceState(null, "", `${root.dataset.pageUrl}${conversation.id}/`);
      }
      htmx.ajax("GET", `${root.dataset.listUrl}?current=${state.id}`, { target: "#conversation-list", swap: "outerHTML" });
    } catch (err) {
      setStatus(`Not saved: ${err.message}`, true);
    }
  }

  // ---- images (vision profiles) --------------------------------------------------------------
  function renderAttachments() {
    ui.attachments.replaceChildren(
      ...state.attachments.map((a, i) => {
        const li = document.createElement("li");
        const img = document.createElement("img");
        img.src = a.url;
        img.alt = a.name;
        const remove = actionButton("×", () => {
          state.attachments.splice(i, 1);
          renderAttachments();
        }, `Remove ${a.name}`);
        remove.className = "icon";
        li.append(img, remove);
        return li;
      }),
    );
    ui.attachments.hidden = state.attachments.length === 0;
  }

  function readAsDataURL(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
  }

  async function addImages(files) {
    const images = [...files].filter((f) => f.type.startsWith("image/"));
    if (!images.length) return false;
    if (profileKind() !== "vision") {
      setStatus("This profile reads text only: pick a vision profile to send images.", true);
      return true;
    }
    for (const file of images) {
      if (!IMAGE_TYPES.includes(file.type)) {
        setStatus(`${file.name || "The image"}: use PNG, JPEG, GIF or WebP.`, true);
        continue;
      }
      if (file.size > MAX_IMAGE_BYTES) {
        setStatus(`${file.name || "The image"} is over 3 MB.`, true);
        continue;
      }
      if (state.attachments.length >= MAX_IMAGES) {
        setStatus(`At most ${MAX_IMAGES} images per message.`, true);
        break;
      }
      state.attachments.push({ url: await readAsDataURL(file), name: file.name || "pasted image" });
    }
    renderAttachments();
    return true;
  }

  // ---- speech ---------------------------------------------------------------------------------
  function base64Of(blob) {
    return readAsDataURL(blob).then((url) => url.slice(url.indexOf(",") + 1));
  }

  // A recording (the browser's webm/ogg) as 16 kHz mono 16-bit WAV, which the server's decoder
  // reads whatever the browser recorded in; the original when the browser can't decode it.
  async function toWav(blob) {
    const RATE = 16000;
    let decoded;
    try {
      decoded = await new OfflineAudioContext(1, 1, RATE).decodeAudioData(await blob.arrayBuffer());
    } catch {
      return blob;
    }
    const context = new OfflineAudioContext(1, Math.max(1, Math.ceil(decoded.duration * RATE)), RATE);
    const source = context.createBufferSource();
    source.buffer = decoded;
    source.connect(context.destination); // mixed down to the context's one channel
    source.start();
    const pcm = (await context.startRendering()).getChannelData(0);
    const view = new DataView(new ArrayBuffer(44 + pcm.length * 2));
    const text = (at, s) => [...s].forEach((c, i) => view.setUint8(at + i, c.charCodeAt(0)));
    text(0, "RIFF");
    view.setUint32(4, 36 + pcm.length * 2, true);
    text(8, "WAVEfmt ");
    view.setUint32(16, 16, true);
    view.setUint16(20, 1, true); // PCM
    view.setUint16(22, 1, true); // mono
    view.setUint32(24, RATE, true);
    view.setUint32(28, RATE * 2, true);
    view.setUint16(32, 2, true);
    view.setUint16(34, 16, true);
    text(36, "data");
    view.setUint32(40, pcm.length * 2, true);
    pcm.forEach((x, i) => {
      const v = Math.max(-1, Math.min(1, x));
      view.setInt16(44 + i * 2, v < 0 ? v * 0x8000 : v * 0x7fff, true);
    });
    return new Blob([view.buffer], { type: "audio/wav" });
  }

  async function transcribe(blob) {
    if (!ui.stt.value) return;
    if (blob.size > MAX_AUDIO_BYTES) {
      setStatus("The audio is over 10 MB.", true);
      return;
    }
    setStatus("Transcribing…");
    try {
      const reply = await request({ type: "transcribe", model: ui.stt.value, audio: await base64Of(blob) });
      const text = (reply.text || "").trim();
      if (!text) {
        setStatus("No speech was recognised.", true);
        return;
      }
      ui.input.value = ui.input.value.trim() ? `${ui.input.value.trim()} ${text}` : text;
      ui.input.focus();
      setStatus("Transcribed: check the text and send it.");
    } catch (err) {
      setStatus(`Transcription failed: ${err.message}`, true);
    }
  }

  let recorder = null;
  async function toggleRecording() {
    if (recorder) {
      recorder.stop();
      return;
    }
    if (!navigator.mediaDevices || !window.MediaRecorder) {
      setStatus("This browser can't record here (recording needs HTTPS or localhost): upload a file instead.", true);
      return;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (err) {
      setStatus(`No microphone: ${err.message}`, true);
      return;
    }
    const chunks = [];
    recorder = new MediaRecorder(stream);
    recorder.ondataavailable = (e) => e.data.size && chunks.push(e.data);
    recorder.onstop = () => {
      stream.getTracks().forEach((t) => t.stop());
      recorder = null;
      ui.record.textContent = "Record";
      ui.record.setAttribute("aria-pressed", "false");
      toWav(new Blob(chunks, { type: chunks[0]?.type || "audio/webm" })).then(transcribe);
    };
    recorder.start();
    ui.record.textContent = "Stop recording";
    ui.record.setAttribute("aria-pressed", "true");
    setStatus("Recording… press Stop recording when done.");
  }

  async function speak(view) {
    if (!ui.tts.value) {
      setStatus("Pick a voice (a text-to-speech profile) first.", true);
      ui.tts.focus();
      return;
    }
    const text = view.content.textContent.trim();
    if (!text) return;
    setStatus("Making speech…");
    try {
      const reply = await request({ type: "speech", model: ui.tts.value, input: text });
      const bytes = Uint8Array.from(atob(reply.data), (c) => c.charCodeAt(0));
      const url = URL.createObjectURL(new Blob([bytes], { type: "audio/wav" }));
      let audio = view.el.querySelector("audio");
      if (!audio) {
        audio = document.createElement("audio");
        audio.controls = true;
        view.el.append(audio);
      }
      audio.src = url;
      setStatus("");
      audio.play().catch(() => {}); // autoplay may be refused: the controls are there
    } catch (err) {
      setStatus(`Speech failed: ${err.message}`, true);
    }
  }

  // ---- wiring ---------------------------------------------------------------------------------
  $("pg-settings").addEventListener("submit", (event) => event.preventDefault());
  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = ui.input.value.trim();
    if (!text || state.turn) return;
    const images = state.attachments.map((a) => a.url);
    ui.input.value = "";
    state.attachments = [];
    renderAttachments();
    send(text, images);
  });
  ui.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      ui.composer.requestSubmit();
    }
  });
  ui.input.addEventListener("paste", (event) => {
    const files = event.clipboardData ? event.clipboardData.files : [];
    if (files.length && [...files].some((f) => f.type.startsWith("image/"))) {
      event.preventDefault();
      addImages(files);
    }
  });
  ui.composer.addEventListener("dragover", (event) => {
    if ([...(event.dataTransfer?.items || [])].some((i) => i.kind === "file")) {
      event.preventDefault();
      ui.composer.classList.add("dropping");
    }
  });
  ui.composer.addEventListener("dragleave", () => ui.composer.classList.remove("dropping"));
  ui.composer.addEventListener("drop", (event) => {
    ui.composer.classList.remove("dropping");
    if (event.dataTransfer?.files.length) {
      event.preventDefault();
      addImages(event.dataTransfer.files);
    }
  });
  ui.attach.addEventListener("change", async () => {
    await addImages(ui.attach.files);
    ui.attach.value = "";
  });
  ui.record?.addEventListener("click", toggleRecording);
  ui.audioFile?.addEventListener("change", async () => {
    const file = ui.audioFile.files[0];
    ui.audioFile.value = "";
    if (file) await transcribe(file);
  });
  ui.stop.addEventListener("click", () => {
    if (state.turn && state.socket) state.socket.send(JSON.stringify({ type: "stop", id: state.turn.id }));
  });
  ui.profile.addEventListener("change", applyProfileDefaults);

  // Reopen a saved chat: its messages, system prompt and settings.
  state.profileLabel = ui.profile.value;
  for (const m of saved.messages) {
    if (m.role === "system") {
      ui.system.value = m.content;
      ui.system.closest("details").open = true;
      continue;
    }
    state.messages.push(m);
  }
  restoreSettings(saved.settings || {});
  renderAll();
  applyProfileDefaults();
  setBusy(false);
})();
