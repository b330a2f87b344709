// The trace waterfall: a collapsible span tree on a time axis, rendered lazily (only the rows in
// view exist in the DOM), so a 10,000-span trace scrolls like a 10-span one. Plain JS, no
// framework. Data: the JSON the server put in #trace-spans (see views_traces.span_rows).
(function () {
  "use strict";
  var ROW = 24;
  var raw = JSON.parse(document.getElementById("trace-spans").textContent);
  var total = Math.max(window.TRACE.duration, 1);
  var byId = new Map();
  var spans = raw.map(function (r, i) {
    var s = {i: i, id: r[0], parent: r[1], name: r[2], service: r[3], kind: r[4], start: r[5],
      dur: r[6], error: r[7] === 1, message: r[8], attrs: r[9], resource: r[10], events: r[11],
      links: r[12], children: [], depth: 0, critical: false, open: true, match: false};
    byId.set(s.id, s);
    return s;
  });
  var roots = [];
  spans.forEach(function (s) {
    var p = byId.get(s.parent);
    if (p && p !== s) p.children.push(s); else roots.push(s);
  });
  function byStart(a, b) { return a.start - b.start; }
  roots.sort(byStart);
  // Depths and sort, iteratively (deep traces must not overflow the stack).
  var stack = roots.slice();
  while (stack.length) {
    var s = stack.pop();
    s.children.sort(byStart);
    s.children.forEach(function (c) { c.depth = s.depth + 1; stack.push(c); });
  }
  // Critical path: from the root that ends last, repeatedly the child that ends last.
  function end(s) { return s.start + s.dur; }
  var node = roots.reduce(function (a, b) { return !a || end(b) > end(a) ? b : a; }, null);
  while (node) {
    node.critical = true;
    node = node.children.reduce(function (a, b) { return !a || end(b) > end(a) ? b : a; }, null);
  }
  var colors = {};
  var palette = ["#3b82f6", "#10b981", "#8b5cf6", "#f59e0b", "#06b6d4", "#ec4899", "#84cc16", "#6366f1"];
  function color(service) {
    if (!(service in colors)) colors[service] = palette[Object.keys(colors).length % palette.length];
    return colors[service];
  }

  var body = document.getElementById("wf-body");
  var spacer = document.getElementById("wf-spacer");
  var detail = document.getElementById("spandetail");
  var showCritical = document.getElementById("wf-critical");
  var find = document.getElementById("wf-find");
  var count = document.getElementById("wf-count");
  var visible = [];
  var selected = null;

  function flatten() {
    visible = [];
    var todo = roots.slice().reverse();
    while (todo.length) {
      var s = todo.pop();
      visible.push(s);
      if (s.open) for (var k = s.children.length - 1; k >= 0; k--) todo.push(s.children[k]);
    }
    spacer.style.height = visible.length * ROW + "px";
    // Small traces get a short panel; big ones scroll inside at most ~2/3 of the window.
    body.style.height = Math.min(visible.length * ROW + 4, Math.max(240, window.innerHeight * 0.62)) + "px";
    count.textContent = visible.length + " of " + spans.length + " spans shown";
  }

  function fmt(ns) {
    if (ns < 1e3) return ns + "ns";
    if (ns < 1e6) return (ns / 1e3).toFixed(0) + "µs";
    if (ns < 1e9) return (ns / 1e6).toFixed(ns < 1e7 ? 2 : 0) + "ms";
    return (ns / 1e9).toFixed(2) + "s";
  }
  function esc(t) {
    return String(t).replace(/[&<>"]/g, function (c) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c];
    });
  }

  var axis = document.getElementById("wf-axis");
  axis.innerHTML = [0, 0.25, 0.5, 0.75, 1].map(function (f) {
    return '<span style="left:' + f * 100 + '%">' + fmt(Math.round(total * f)) + "</span>";
  }).join("");

  var pool = [];
  function render() {
    var top = body.scrollTop, height = body.clientHeight;
    var first = Math.max(0, Math.floor(top / ROW) - 10);
    var last = Math.min(visible.length, Math.ceil((top + height) / ROW) + 10);
    var html = [];
    for (var n = first; n < last; n++) {
      var s = visible[n];
      var left = 100 * s.start / total, width = Math.max(100 * s.dur / total, 0.15);
      var cls = "wf-row" + (s.error ? " error" : "") + (s === selected ? " selected" : "") +
        (s.critical && showCritical.checked ? " critical" : "") + (s.match ? " match" : "");
      var toggle = s.children.length
        ? '<button class="tog" data-tog="' + s.i + '">' + (s.open ? "▾" : "▸") + "</button>"
        : '<span class="tog"></span>';
      html.push('<div class="' + cls + '" data-i="' + s.i + '" style="top:' + n * ROW + 'px">' +
        '<div class="wf-name" style="padding-left:' + (6 + s.depth * 14) + 'px">' + toggle +
        '<span class="svcdot" style="background:' + color(s.service) + '"></span>' +
        '<span class="svcname">' + esc(s.service) + "</span> " + esc(s.name) +
        (s.error ? ' <span class="bad">✖</span>' : "") +
        (s.children.length && !s.open ? ' <span class="muted">(' + s.children.length + ")</span>" : "") +
        '</div><div class="wf-track"><div class="wf-bar" style="left:' + left + "%;width:" + width +
        "%;background:" + (s.error ? "#dc2626" : color(s.service)) + '"></div><span class="wf-dur" style="left:' +
        Math.min(left + width, 92) + '%">' + fmt(s.dur) + "</span></div></div>");
    }
    pool = html;
    // Keep the spacer; replace the rows.
    body.innerHTML = "";
    body.appendChild(spacer);
    body.insertAdjacentHTML("beforeend", pool.join(""));
  }

  var pending = false;
  body.addEventListener("scroll", function () {
    if (pending) return;
    pending = true;
    requestAnimationFrame(function () { pending = false; render(); });
  });

  function kv(pairs) {
    if (!pairs.length) return '<p class="muted">none</p>';
    return '<table class="kv">' + pairs.map(function (p) {
      return "<tr><th>" + esc(p[0]) + '</th><td class="mono">' + esc(p[1]) + "</td></tr>";
    }).join("") + "</table>";
  }

  function show(s) {
    selected = s;
    history.replaceState(null, "", "#span=" + s.id);
    var links = s.links.map(function (l) {
      var here = l[0] === window.TRACE.id;
      var href = here ? "#span=" + l[1] : window.TRACE.link.replace("TRACEID", l[0]) + "#span=" + l[1];
      var label = here ? "span " + l[1] : "trace " + l[0].slice(0, 12) + "… span " + l[1];
      return '<li><a href="' + href + '">' + (here ? "" : "↶ replayed from / linked ") + esc(label) +
        "</a>" + kv(l[2]) + "</li>";
    }).join("");
    var events = s.events.map(function (e) {
      return "<li><b>" + esc(e[0]) + '</b> <span class="muted">at +' + fmt(e[1]) + "</span>" + kv(e[2]) + "</li>";
    }).join("");
    detail.hidden = false;
    detail.innerHTML = '<div class="sd-head"><h2>' + esc(s.name) + ' <span class="muted">' + esc(s.service) +
      "</span></h2>" + '<button type="button" class="link" id="sd-close">close ✕</button></div>' +
      '<div class="meta"><span>Span <span class="mono">' + esc(s.id) + "</span></span><span>kind " + esc(s.kind) +
      "</span><span>start +" + fmt(s.start) + "</span><span>duration <b>" + fmt(s.dur) + "</b></span>" +
      (s.error ? '<span class="badge error">✖ ' + esc(s.message || "error") + "</span>" : "") +
      (s.critical ? '<span class="badge crit">critical path</span>' : "") +
      '<a href="#span=' + esc(s.id) + '">permalink</a></div>' +
      '<div class="cols"><div><h3>Attributes</h3>' + kv(s.attrs) + "<h3>Resource</h3>" + kv(s.resource) +
      "</div><div><h3>Span events</h3>" + (events ? "<ul class='plain'>" + events + "</ul>" : '<p class="muted">none</p>') +
      "<h3>Links</h3>" + (links ? "<ul class='plain'>" + links + "</ul>" : '<p class="muted">none</p>') + "</div></div>";
    document.getElementById("sd-close").onclick = function () { detail.hidden = true; selected = null; render(); };
    render();
  }

  function reveal(s) {
    for (var p = byId.get(s.parent); p; p = byId.get(p.parent)) { p.open = true; if (p.parent === p.id) break; }
    flatten();
    var n = visible.indexOf(s);
    body.scrollTop = Math.max(0, n * ROW - body.clientHeight / 3);
    show(s);
  }

  body.addEventListener("click", function (ev) {
    var tog = ev.target.closest("[data-tog]");
    if (tog) {
      var t = spans[+tog.dataset.tog];
      t.open = !t.open;
      flatten(); render();
      return;
    }
    var row = ev.target.closest(".wf-row");
    if (row) show(spans[+row.dataset.i]);
  });
  document.querySelector(".wf-toolbar").addEventListener("click", function (ev) {
    var act = ev.target.dataset && ev.target.dataset.act;
    if (!act) return;
    spans.forEach(function (s) { s.open = act === "expand"; });
    flatten(); render();
  });
  showCritical.addEventListener("change", render);
  var matches = [], at = -1;
  find.addEventListener("input", function () {
    var q = find.value.toLowerCase().trim();
    matches = [];
    spans.forEach(function (s) {
      s.match = !!q && (s.name.toLowerCase().indexOf(q) >= 0 || s.service.toLowerCase().indexOf(q) >= 0 ||
        s.attrs.some(function (p) { return (p[0] + "=" + p[1]).toLowerCase().indexOf(q) >= 0; }));
      if (s.match) matches.push(s);
    });
    at = -1;
    count.textContent = q ? matches.length + " matching spans (Enter: next)" : visible.length + " of " + spans.length + " spans shown";
    render();
  });
  find.addEventListener("keydown", function (ev) {
    if (ev.key === "Enter" && matches.length) { ev.preventDefault(); at = (at + 1) % matches.length; reveal(matches[at]); }
  });
  // Big traces open with the first two levels expanded; small ones whole.
  if (spans.length > 500) spans.forEach(function (s) { s.open = s.depth < 1; });
  flatten(); render();
  function fromHash() {
    var m = /span=([0-9a-f]+)/.exec(location.hash);
    if (m && byId.has(m[1])) reveal(byId.get(m[1]));
  }
  window.addEventListener("hashchange", fromHash);
  fromHash();
})();
