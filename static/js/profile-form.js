// The profile form shows the settings that apply to the chosen type (all of them while the
// type is still "detect from the model"). Hidden fields are still submitted as they are.
(function () {
  const kind = document.getElementById("id_kind");
  if (!kind) return;
  function apply() {
    for (const el of document.querySelectorAll("[data-kinds]")) {
      const kinds = el.dataset.kinds.split(" ");
      el.hidden = kind.value ? !kinds.includes(kind.value) : el.tagName === "P" && !kinds.includes("llm");
    }
  }
  kind.addEventListener("change", apply);
  apply();
})();
