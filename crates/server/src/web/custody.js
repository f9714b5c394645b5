// The pages' one script. It fills in the navigation bar's count of what
// waits for the visitor, and follows a running build's or deployment's log
// in place. The pages work without it: "My work" lists the same, and a
// running build's or deployment's page reloads itself.
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

(function () {
  "use strict";
  var log = document.getElementById("build-log");
  var follow = log && log.getAttribute("data-follow");
  if (!follow || !window.fetch) {
    return;
  }
  var after = Number(log.getAttribute("data-after")) || 0;
  function poll() {
    fetch(follow + "?after=" + after, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (answer) {
        return answer.ok ? answer.json() : null;
      })
      .then(function (page) {
        if (!page) {
          window.setTimeout(poll, 3000);
          return;
        }
        page.chunks.forEach(function (chunk) {
          log.appendChild(document.createTextNode(chunk.data));
          after = chunk.seq;
        });
        log.setAttribute("data-after", String(after));
        if (page.complete) {
          // Finished: the page shows its artifacts and provenance now.
          window.location.reload();
        } else {
          window.setTimeout(poll, 1000);
        }
      })
      .catch(function () {
        window.setTimeout(poll, 3000);
      });
  }
  window.setTimeout(poll, 1000);
})();

(function () {
  "use strict";
  // A running deployment's log, followed by the length the page holds.
  var log = document.getElementById("deployment-log");
  var follow = log && log.getAttribute("data-follow");
  if (!follow || !window.fetch) {
    return;
  }
  var after = Number(log.getAttribute("data-after")) || 0;
  function poll() {
    fetch(follow + "?after=" + after, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (answer) {
        return answer.ok ? answer.json() : null;
      })
      .then(function (page) {
        if (!page) {
          window.setTimeout(poll, 3000);
          return;
        }
        if (page.data) {
          log.appendChild(document.createTextNode(page.data));
        }
        after = page.length;
        log.setAttribute("data-after", String(after));
        if (page.complete) {
          // Ended: the page shows how, and the signed attestation.
          window.location.reload();
        } else {
          window.setTimeout(poll, 1000);
        }
      })
      .catch(function () {
        window.setTimeout(poll, 3000);
      });
  }
  window.setTimeout(poll, 1000);
})();
