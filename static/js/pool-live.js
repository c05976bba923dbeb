// The pool page: the server re-renders the live partial every 2 s over server-sent events;
// swap it in, unless an action's own answer is on its way.
(() => {
  const live = document.getElementById("pool-live");
  const dot = document.getElementById("live-status");
  const events = new EventSource(live.dataset.events);
  let busy = 0;
  live.addEventListener("htmx:beforeRequest", () => { busy += 1; });
  live.addEventListener("htmx:afterRequest", () => { busy = Math.max(0, busy - 1); });
  events.addEventListener("pool", (e) => {
    dot.classList.remove("off");
    if (busy) return;
    live.innerHTML = e.data;
    htmx.process(live);
    live.dataset.updates = String(Number(live.dataset.updates || 0) + 1);
  });
  events.addEventListener("error", () => dot.classList.add("off"));
  addEventListener("pagehide", () => events.close());
})();
