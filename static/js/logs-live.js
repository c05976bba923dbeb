// The Logs page: the server re-renders the records when a log file changes and sends them over
// server-sent events, for the filters in the form; "Follow" off stops the stream (to read).
(() => {
  const live = document.getElementById("log-records");
  const form = document.getElementById("log-filters");
  const follow = document.getElementById("logs-live");
  const dot = document.getElementById("live-status");
  let events = null;
  let busy = 0;

  function query() {
    const params = new URLSearchParams(new FormData(form));
    for (const [name, value] of Array.from(params)) if (!value) params.delete(name);
    const text = params.toString();
    return text ? "?" + text : "";
  }
  function close() {
    if (events) { events.close(); events = null; }
    dot.classList.add("off");
  }
  function open() {
    close();
    if (!follow.checked) return;
    events = new EventSource(live.dataset.events + query());
    events.addEventListener("logs", (e) => {
      dot.classList.remove("off");
      if (busy) return;  // the filter's own answer is on its way
      live.innerHTML = e.data;
      live.dataset.updates = String(Number(live.dataset.updates || 0) + 1);
    });
    events.addEventListener("error", () => dot.classList.add("off"));
  }
  form.addEventListener("htmx:beforeRequest", () => { busy += 1; });
  form.addEventListener("htmx:afterRequest", () => { busy = Math.max(0, busy - 1); open(); });
  follow.addEventListener("change", open);
  addEventListener("pagehide", close);
  open();
})();
