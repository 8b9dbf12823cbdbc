// taskqueue dashboard: the overview refreshes itself every few seconds; Pause stops it
// (remembered in this browser). No library, no build step.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var button = document.getElementById("pause");
  var state = document.getElementById("refresh-state");
  if (!live || !button) return;
  var every = 1000 * (parseFloat(live.dataset.every) || 5);
  var paused = window.localStorage.getItem("taskqueue.paused") === "1";

  function show() {
    button.textContent = paused ? button.dataset.pausedLabel : button.dataset.runningLabel;
    state.textContent = paused ? "paused" : "refreshing every " + every / 1000 + " s";
    live.classList.toggle("paused", paused);
  }

  function refresh() {
    if (paused || document.hidden) return;
    fetch(live.dataset.refresh, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (response.redirected || !response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (html) {
        live.innerHTML = html;
        live.dataset.refreshed = String(Date.now());
      })
      .catch(function (error) {
        state.textContent = "refresh failed (" + error.message + "); retrying";
      });
  }

  button.addEventListener("click", function () {
    paused = !paused;
    window.localStorage.setItem("taskqueue.paused", paused ? "1" : "0");
    show();
    if (!paused) refresh();
  });
  show();
  window.setInterval(refresh, every);
})();
