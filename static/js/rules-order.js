// Drag rows of the rules table to reorder; the form posts the ids in the new order.
(function () {
  let dragged = null;
  document.addEventListener("dragstart", function (ev) {
    const row = ev.target.closest && ev.target.closest("table.rules tr[data-id]");
    if (!row) return;
    dragged = row;
    ev.dataTransfer.effectAllowed = "move";
  });
  document.addEventListener("dragover", function (ev) {
    const row = ev.target.closest && ev.target.closest("table.rules tr[data-id]");
    if (!dragged || !row || row === dragged) return;
    ev.preventDefault();
    const after = ev.clientY > row.getBoundingClientRect().top + row.offsetHeight / 2;
    row.parentNode.insertBefore(dragged, after ? row.nextSibling : row);
  });
  document.addEventListener("drop", function (ev) {
    if (!dragged) return;
    ev.preventDefault();
    dragged = null;
    const form = document.getElementById("rule-order");
    if (form && window.htmx) htmx.trigger(form, "reorder"); else if (form) form.submit();
  });
})();
