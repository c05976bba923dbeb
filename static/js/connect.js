// The Connect page: copy buttons, and the key picker applies on change.
document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button) return;
  const text = document.getElementById(button.dataset.copy).textContent;
  navigator.clipboard.writeText(text).then(
    () => { button.textContent = "Copied"; },
    () => { button.textContent = "Select and copy"; },
  );
});
const picker = document.getElementById("key-select");
if (picker) picker.addEventListener("change", () => picker.form.submit());
