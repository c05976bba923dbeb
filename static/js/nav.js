// The site navigation: under ~1000 px it folds behind the Menu button (CSS hides it unless the
// body has .nav-open). The button says whether it is open (aria-expanded); Escape closes it and
// gives focus back to the button. Wide screens ignore all this: the nav is always shown.
(() => {
  const button = document.querySelector(".menu-button");
  const nav = document.getElementById("site-nav");
  if (!button || !nav) return;
  function set(open) {
    document.body.classList.toggle("nav-open", open);
    button.setAttribute("aria-expanded", String(open));
  }
  button.addEventListener("click", () => set(button.getAttribute("aria-expanded") !== "true"));
  document.addEventListener("keydown", (e) => {
    if (e.key !== "Escape" || !document.body.classList.contains("nav-open")) return;
    set(false);
    button.focus();
  });
  // Back on a wide screen: forget the narrow screen's open state.
  matchMedia("(min-width: 1000px)").addEventListener("change", (e) => { if (e.matches) set(false); });
})();
