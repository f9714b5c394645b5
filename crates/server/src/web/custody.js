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
  // Follows a running job's log in place: asks for what came after the
  // cursor the page holds, adds it, and reloads the page once the job has
  // ended (it shows how, and what the job signed).
  function follow(id, take) {
    var log = document.getElementById(id);
    var address = log && log.getAttribute("data-follow");
    if (!address || !window.fetch) {
      return;
    }
    var after = Number(log.getAttribute("data-after")) || 0;
    function poll() {
      fetch(address + "?after=" + after, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (answer) {
          return answer.ok ? answer.json() : null;
        })
        .then(function (page) {
          if (!page) {
            window.setTimeout(poll, 3000);
            return;
          }
          after = take(page, function (text) {
            log.appendChild(document.createTextNode(text));
          }, after);
          log.setAttribute("data-after", String(after));
          if (page.complete) {
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
  }
  // A build's log comes in numbered chunks.
  follow("build-log", function (page, add, after) {
    page.chunks.forEach(function (chunk) {
      add(chunk.data);
      after = chunk.seq;
    });
    return after;
  });
  // A deployment's log comes as what follows the length the page holds.
  follow("deployment-log", function (page, add) {
    if (page.data) {
      add(page.data);
    }
    return page.length;
  });
})();
