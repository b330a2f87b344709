// The replay job page: poll progress.json once a second until the job finishes; the control
// buttons post their command and show the new state at once.
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var controls = $("controls");
  function paint(p) {
    $("fill").style.width = p.percent + "%";
    $("pct").textContent = p.percent + "%";
    ["sent", "total", "skipped", "failed"].forEach(function (k) { $(k).textContent = p[k]; });
    var status = $("status");
    status.textContent = p.status + (p.command !== "run" && p.status === "running" ? " (" + p.command + " requested)" : "");
    status.className = "status " + p.status;
    $("error").hidden = !p.error;
    $("error").textContent = p.error;
    $("fill").className = "fill " + p.status;
    if (controls) {
      controls.querySelector("[data-action=pause]").disabled = p.finished || p.status === "paused";
      controls.querySelector("[data-action=resume]").disabled = !(p.status === "paused" || p.status === "failed");
      controls.querySelector("[data-action=cancel]").disabled = p.finished;
    }
  }
  var timer = null;
  function poll() {
    fetch(window.JOB.progress, {headers: {accept: "application/json"}, credentials: "same-origin"})
      .then(function (r) { return r.json(); })
      .then(function (p) {
        paint(p);
        if (p.finished) { clearInterval(timer); timer = null; if (!window.JOB.finished) location.reload(); }
      });
  }
  if (controls) {
    var token = controls.querySelector("[name=csrfmiddlewaretoken]").value;
    controls.addEventListener("click", function (ev) {
      var action = ev.target.dataset.action;
      if (!action) return;
      fetch(controls.dataset.url.replace("ACTION", action), {
        method: "POST", credentials: "same-origin",
        headers: {"X-CSRFToken": token, accept: "application/json"},
      }).then(function (r) { return r.json(); }).then(function (p) {
        paint(p);
        if (!timer && !p.finished) timer = setInterval(poll, 1000);
      });
    });
  }
  poll();
  if (!window.JOB.finished) timer = setInterval(poll, 1000);
})();
