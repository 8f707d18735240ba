// /api/docs: Swagger UI (vendored, see vendor/swagger-ui/VENDORED.md) on the
// API's own OpenAPI document; "Authorize" takes a bearer token.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  window.SwaggerUIBundle({ url: "/api/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
});
