// The home page: the live dot and update count of the dashboard's poll, and Copy buttons.
(() => {
  const poll = document.getElementById("home-poll");
  const dot = document.getElementById("live-status");
  if (poll && dot) {
    poll.addEventListener("htmx:afterRequest", (e) => {
      const ok = e.detail.successful;
      dot.classList.toggle("off", !ok);
      if (ok) poll.dataset.updates = String(Number(poll.dataset.updates || 0) + 1);
    });
  }
  document.addEventListener("click", (e) => {
    const button = e.target.closest("button[data-copy]");
    if (!button) return;
    const source = document.getElementById(button.dataset.copy);
    if (!source) return;
    const done = (label) => {
      button.textContent = label;
      setTimeout(() => { button.textContent = "Copy"; }, 1500);
    };
    const select = () => {
      const range = document.createRange();
      range.selectNodeContents(source);
      const sel = getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      done("Press Ctrl+C");
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(source.textContent).then(() => done("Copied"), select);
    } else {
      select();
    }
  });
})();
