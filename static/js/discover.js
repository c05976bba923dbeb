// Discover: the page renders at once; the results come from the same URL as an htmx-style
// partial (HX-Request), one request per query. Typing waits for a 600 ms pause, Enter or
// the Search button searches now, a query already shown is not asked again, and a newer
// search aborts an older one (a late answer is ignored). A failed search shows the
// server's message and a Retry button.
(() => {
  const form = document.getElementById("discover-form");
  const state = document.getElementById("search-state");
  const PAUSE_MS = 600;
  let timer = null;
  let current = null;
  let shown = null;

  const results = () => document.getElementById("results");
  const query = () => {
    const params = new URLSearchParams(new FormData(form));
    return params.toString();
  };

  function setState(text) {
    state.textContent = text;
    form.dataset.state = text ? "searching" : "idle";
  }

  function fail(message) {
    const box = document.createElement("div");
    box.id = "results";
    const alert = document.createElement("div");
    alert.className = "error-box";
    alert.setAttribute("role", "alert");
    const p = document.createElement("p");
    p.className = "error";
    p.textContent = message;
    const retry = document.createElement("button");
    retry.type = "button";
    retry.className = "secondary";
    retry.dataset.retry = "";
    retry.textContent = "Retry";
    alert.append(p, retry);
    box.append(alert);
    results().replaceWith(box);
  }

  async function search(force) {
    clearTimeout(timer);
    const qs = query();
    if (!force && qs === shown) return;
    shown = qs;
    if (current) current.abort();
    const mine = new AbortController();
    current = mine;
    setState("Searching…");
    const old = results();
    old.setAttribute("aria-busy", "true");
    old.querySelectorAll("[role=alert]").forEach((el) => el.remove()); // never next to a stale error
    const url = form.action + "?" + qs;
    history.replaceState(null, "", url);
    try {
      const resp = await fetch(url, {
        headers: { "HX-Request": "true" },
        credentials: "same-origin",
        signal: mine.signal,
      });
      const html = await resp.text();
      if (current !== mine) return;
      if (!resp.ok) throw new Error(`The search failed (HTTP ${resp.status}).`);
      const next = document.createElement("div");
      next.innerHTML = html;
      const fresh = next.querySelector("#results");
      if (!fresh) throw new Error("The search answered something unexpected.");
      results().replaceWith(fresh);
      if (fresh.querySelector("[role=alert]")) shown = null; // an error: the same query may be retried
    } catch (err) {
      if (current !== mine || err.name === "AbortError") return;
      shown = null;
      fail(err.message && err.message.startsWith("The search") ? err.message
        : "The search could not reach MLX Manager; check your connection, then retry.");
    } finally {
      if (current === mine) {
        current = null;
        setState("");
      }
    }
  }

  form.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => search(false), PAUSE_MS);
  });
  form.addEventListener("change", () => {
    clearTimeout(timer);
    timer = setTimeout(() => search(false), PAUSE_MS);
  });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    search(false);
  });
  document.addEventListener("click", (e) => {
    if (e.target.closest("#results [data-retry]")) search(true);
  });
  search(true);
})();
