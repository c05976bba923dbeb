// The playground: chat with a profile over /v1/ws/chat, save each finished turn.
// Protocol (inference/consumers.py): send {type: "chat", id, body} or {type: "stop", id};
// receive {type: "delta", id, text}, then {type: "done", id, finish_reason, usage} or {type: "error", id, error}.
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
  };
  const saved = JSON.parse($("pg-conversation").textContent);
  const state = { id: saved.id, messages: [], socket: null, turn: null, seq: 0 };

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

  // One transcript entry; returns a handle that re-renders it as text streams in.
  function addEntry(role, label) {
    ui.empty?.remove();
    const el = document.createElement("article");
    el.className = `msg ${role}`;
    const who = document.createElement("div");
    who.className = "who";
    who.textContent = label;
    const reasoning = document.createElement("details");
    reasoning.className = "reasoning";
    reasoning.hidden = true;
    const summary = document.createElement("summary");
    summary.textContent = "Reasoning";
    const reasoningText = document.createElement("div");
    reasoning.append(summary, reasoningText);
    const content = document.createElement("div");
    content.className = "content";
    const calls = document.createElement("ul");
    calls.className = "tool-calls";
    calls.hidden = true;
    const meta = document.createElement("div");
    meta.className = "meta";
    el.append(who, reasoning, content, calls, meta);
    ui.transcript.append(el);
    const view = {
      el,
      show(text, thinkingText = "", thinking = false) {
        content.textContent = text.trim();
        reasoning.hidden = !thinkingText.trim();
        reasoningText.textContent = thinkingText.trim();
        summary.textContent = thinking ? "Reasoning…" : "Reasoning";
        if (thinking) reasoning.open = true;
        ui.transcript.scrollTop = ui.transcript.scrollHeight;
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
        el.append(p);
        el.classList.add("failed");
      },
    };
    return view;
  }

  function showMessage(m) {
    const view = addEntry(m.role, m.role === "user" ? "You" : state.profileLabel || "Assistant");
    view.show(m.content, m.reasoning || "");
    if (m.tool_calls) view.tools(m.tool_calls);
    if (m.role === "assistant") view.meta(usageText(m));
    return view;
  }

  function applyProfileDefaults() {
    const option = ui.profile.selectedOptions[0];
    const defaults = option ? JSON.parse(option.dataset.defaults || "{}") : {};
    const hint = (key) => (defaults[key] !== undefined ? `${defaults[key]} (profile)` : "model default");
    ui.temperature.placeholder = hint("temperature");
    ui.topP.placeholder = hint("top_p");
    ui.maxTokens.placeholder = hint("max_tokens");
    ui.system.placeholder = option?.dataset.system || "None: the profile's system prompt, if any, applies.";
  }

  async function problemText(response) {
    try {
      const body = await response.json();
      return body.detail || body.title || `HTTP ${response.status}`;
    } catch {
      return `HTTP ${response.status}`;
    }
  }

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
    };
    state.socket = ws;
    return ws;
  }

  function onSocketMessage(event) {
    const msg = JSON.parse(event.data);
    const turn = state.turn;
    if (!turn || msg.id !== turn.id) return;
    if (msg.type === "delta") {
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

  function number(input) {
    const value = input.value.trim();
    return value === "" ? undefined : Number(value);
  }

  function chatBody() {
    const messages = state.messages.map((m) => ({ role: m.role, content: m.content }));
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

  async function send(text) {
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
    state.profileLabel = ui.profile.value;
    const user = { role: "user", content: text };
    state.messages.push(user);
    showMessage(user);
    const turn = { id: `turn-${Date.now()}-${++state.seq}`, raw: "", reasoning: "", calls: [], text, view: addEntry("assistant", ui.profile.value) };
    turn.view.meta("…");
    state.turn = turn;
    setBusy(true);
    setStatus("");
    try {
      const ws = await connect();
      ws.send(JSON.stringify({ type: "chat", id: turn.id, body: chatBody() }));
    } catch (err) {
      finish(turn, { error: err.message });
    }
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
        state.messages.pop();
        if (!ui.input.value) ui.input.value = turn.text;
        return;
      }
    }
    const answer = { role: "assistant", content: parts.content.trim() };
    if (parts.reasoning.trim()) answer.reasoning = parts.reasoning.trim();
    const calls = turn.calls.filter(Boolean);
    if (calls.length) answer.tool_calls = calls;
    if (result.usage) answer.usage = result.usage;
    answer.finish_reason = result.finish_reason || "error";
    turn.view.show(answer.content, answer.reasoning || "");
    if (calls.length) turn.view.tools(calls);
    if (!result.error) turn.view.meta(usageText(answer));
    state.messages.push(answer);
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
        body: JSON.stringify({ profile_name: ui.profile.value, messages }),
      });
      if (!response.ok) {
        setStatus(`Not saved: ${await problemText(response)}`, true);
        return;
      }
      const conversation = await response.json();
      if (!state.id) {
        state.id = conversation.id;
        history.replaceState(null, "", `${root.dataset.pageUrl}${conversation.id}/`);
      }
      htmx.ajax("GET", `${root.dataset.listUrl}?current=${state.id}`, { target: "#conversation-list", swap: "outerHTML" });
    } catch (err) {
      setStatus(`Not saved: ${err.message}`, true);
    }
  }

  $("pg-settings").addEventListener("submit", (event) => event.preventDefault());
  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = ui.input.value.trim();
    if (!text || state.turn) return;
    ui.input.value = "";
    send(text);
  });
  ui.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      ui.composer.requestSubmit();
    }
  });
  ui.stop.addEventListener("click", () => {
    if (state.turn && state.socket) state.socket.send(JSON.stringify({ type: "stop", id: state.turn.id }));
  });
  ui.profile.addEventListener("change", applyProfileDefaults);

  // Reopen a saved chat.
  state.profileLabel = ui.profile.value;
  for (const m of saved.messages) {
    if (m.role === "system") {
      ui.system.value = m.content;
      ui.system.closest("details").open = true;
      continue;
    }
    state.messages.push(m);
    showMessage(m);
  }
  applyProfileDefaults();
  setBusy(false);
})();
