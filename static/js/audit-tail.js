// Live tail of the audit log: the server pushes rendered <tr> rows over a WebSocket.
(function () {
  const box = document.getElementById("live-tail");
  if (!box) return;
  let socket = null;
  function rows() { return document.getElementById("audit-rows"); }
  // New rows are not filtered by the server: with filters on, the table would stop telling
  // the truth, so the tail adds rows only to the unfiltered log.
  const FILTERS = ["since", "until", "user", "model", "backend", "status"];
  function filtered() {
    const q = new URLSearchParams(location.search);
    return FILTERS.some(function (k) { return (q.get(k) || "") !== ""; });
  }
  function open() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + location.host + box.dataset.ws);
    socket.onmessage = function (ev) {
      const msg = JSON.parse(ev.data);
      const body = rows();
      if (!body || msg.type !== "rows" || filtered()) return;
      const empty = body.querySelector("tr.empty");
      if (empty) empty.remove();
      const tmp = document.createElement("tbody");
      tmp.innerHTML = msg.html;  // rendered and escaped by the server's template
      const fresh = Array.from(tmp.children);
      fresh.reverse().forEach(function (tr) { tr.classList.add("fresh"); body.prepend(tr); });
      while (body.children.length > 200) body.lastElementChild.remove();
    };
    socket.onclose = function () { if (box.checked) setTimeout(open, 2000); };
  }
  box.addEventListener("change", function () {
    if (box.checked) open(); else if (socket) { const s = socket; socket = null; s.onclose = null; s.close(); }
  });
})();
