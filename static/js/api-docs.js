// The API reference pages: Swagger UI from /static/ninja/, configured from the page's JSON
// data block; on /api/docs, "Try it out" sends the page's CSRF token (the cookie is not
// readable by scripts).
(() => {
  const root = document.getElementById("swagger-ui");
  const config = JSON.parse(document.getElementById("swagger-settings").textContent);
  config.dom_id = "#swagger-ui";
  config.presets = [SwaggerUIBundle.presets.apis];
  const token = root.dataset.csrfToken;
  if (token) {
    config.requestInterceptor = (req) => {
      req.headers["X-CSRFToken"] = token;
      return req;
    };
  }
  SwaggerUIBundle(config);
  // Code samples and schemas that scroll sideways on a narrow screen must be reachable from the
  // keyboard (WCAG 2.1.1): each becomes a tab stop as Swagger UI renders it.
  const SCROLLERS = "pre:not([tabindex]), .example:not([tabindex]), .highlight-code:not([tabindex])";
  const focusable = () => root.querySelectorAll(SCROLLERS).forEach((el) => el.setAttribute("tabindex", "0"));
  new MutationObserver(focusable).observe(root, { childList: true, subtree: true });
})();
