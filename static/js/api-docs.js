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
})();
