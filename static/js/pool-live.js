// The pool page: the server re-renders the live partial every 2 s over server-sent events; it is
// merged in place (morph.js), so a focused button stays focused and nothing jumps, unless an
// action's own answer is on its way. An action's answer is merged the same way; when the focused
// control went away with it (Load moves a row to the other table), focus goes to the message.
(() => {
  const live = document.getElementById("pool-live");
  const dot = document.getElementById("live-status");
  const message = document.getElementById("pool-message");
  const events = new EventSource(live.dataset.events);
  let busy = 0;
  live.addEventListener("htmx:beforeRequest", () => { busy += 1; });
  live.addEventListener("htmx:afterRequest", () => { busy = Math.max(0, busy - 1); });
  live.addEventListener("htmx:beforeSwap", (e) => {
    if (e.detail.target !== live || !e.detail.shouldSwap) return;
    e.detail.shouldSwap = false;
    const t = document.createElement("template");
    t.innerHTML = e.detail.serverResponse;
    const oob = t.content.getElementById("pool-message");
    if (oob) { oob.remove(); message.innerHTML = oob.innerHTML; }
    const hadFocus = live.contains(document.activeElement);
    mlxmMorph(live, t.innerHTML);
    htmx.process(live);
    if (hadFocus && !live.contains(document.activeElement)) message.focus({ preventScroll: false });
  });
  events.addEventListener("pool", (e) => {
    dot.classList.remove("off");
    if (busy) return;
    mlxmMorph(live, e.data);
    htmx.process(live);
    live.dataset.updates = String(Number(live.dataset.updates || 0) + 1);
  });
  events.addEventListener("error", () => dot.classList.add("off"));
  addEventListener("pagehide", () => events.close());
})();
