// Fills in the navigation bar's count of what waits for the visitor, and
// keeps it current. The pages work without it: "My work" lists the same.
(function () {
  "use strict";
  var badge = document.getElementById("work-count");
  if (!badge || !window.fetch) {
    return;
  }
  function refresh() {
    fetch("/work/count", { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (answer) {
        return answer.ok ? answer.json() : null;
      })
      .then(function (body) {
        if (body && typeof body.count === "number") {
          badge.textContent = String(body.count);
          badge.hidden = body.count === 0;
          badge.setAttribute("aria-label", body.count + " waiting for you");
        }
      })
      .catch(function () {});
  }
  refresh();
  window.setInterval(refresh, 30000);
})();
