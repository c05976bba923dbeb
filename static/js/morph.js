// Update a live region in place: nodes that are still there keep their identity (and so the
// keyboard focus, text selection and open <details>), only what changed is touched. Elements
// match when their tag and key agree: the id, data-key, data-model or data-profile attribute,
// else their position among siblings of that tag. `mlxmMorph(element, html)` replaces the
// element's children with `html` this way.
(() => {
  const key = (n) => n.nodeType === 1
    ? n.id || n.getAttribute("data-key") || n.getAttribute("data-model") || n.getAttribute("data-profile") || ""
    : "";
  const same = (a, b) => a.nodeType === b.nodeType && (a.nodeType !== 1 || (a.tagName === b.tagName && key(a) === key(b)));

  function morphNode(a, b) {
    if (a.nodeType !== 1) {
      if (a.nodeValue !== b.nodeValue) a.nodeValue = b.nodeValue;
      return;
    }
    for (const attr of Array.from(a.attributes)) {
      // An open <details> stays open: the reader opened it.
      if (!b.hasAttribute(attr.name) && !(a.tagName === "DETAILS" && attr.name === "open")) a.removeAttribute(attr.name);
    }
    for (const attr of Array.from(b.attributes)) {
      if (a.getAttribute(attr.name) !== attr.value) a.setAttribute(attr.name, attr.value);
    }
    morphChildren(a, b);
  }

  function morphChildren(from, to) {
    let cur = from.firstChild;
    for (const next of Array.from(to.childNodes)) {
      let match = null;
      for (let c = cur; c; c = c.nextSibling) if (same(c, next)) { match = c; break; }
      if (match) {
        while (cur !== match) { const gone = cur; cur = cur.nextSibling; gone.remove(); }
        morphNode(match, next);
        cur = match.nextSibling;
      } else {
        from.insertBefore(next, cur);
      }
    }
    while (cur) { const gone = cur; cur = cur.nextSibling; gone.remove(); }
  }

  window.mlxmMorph = (element, html) => {
    const t = document.createElement("template");
    t.innerHTML = html;
    morphChildren(element, t.content);
  };

  // htmx's out-of-band innerHTML swaps into an element marked data-morph (the home page's live
  // panels) are merged the same way.
  document.addEventListener("htmx:oobBeforeSwap", (e) => {
    const { target, fragment } = e.detail;
    if (!target || !target.hasAttribute("data-morph") || !e.detail.shouldSwap) return;
    e.detail.shouldSwap = false;
    morphChildren(target, fragment);
    if (window.htmx) htmx.process(target);
  });
})();
