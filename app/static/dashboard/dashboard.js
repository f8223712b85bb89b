// ESP's operators' dashboard: polls GET /api/v1/dashboard every second with the key from sessionStorage
// and draws the state plane (SVG), the activity charts (uPlot), queues, nodes, events and tasks.
(function () {
  "use strict";

  var KEY_ITEM = "esp.dashboard.key";
  var POLL_MS = 1000;
  var WINDOW_S = 300;          // the charts show the last five minutes
  var TRAIL_POINTS = 20;       // each node's recent path in the plane
  var SIZE = 480, MARGIN = 46, FULL_EXTENT = 1.5;   // the thesis's plane, with room for every distance up to sqrt(2)
  var EXTENT = FULL_EXTENT, SCALE = (SIZE - 2 * MARGIN) / EXTENT;
  var ZONE_COLOUR = { I: "#2e7d32", II: "#ef8f00", III: "#c62828" };
  var QUEUE_COLOURS = ["#6b7785", "#1565c0", "#2e7d32", "#ef8f00", "#8e24aa", "#00897b"];
  var SVG_NS = "http://www.w3.org/2000/svg";

  var state = { since: 0, points: [], timer: null, charts: {}, queues: [], trails: {}, running: false, zoom: false, last: null };
  var $ = function (id) { return document.getElementById(id); };

  function esc(value) {
    return String(value === null || value === undefined ? "" : value).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function fixed(v, digits) { return v === null || v === undefined ? "–" : Number(v).toFixed(digits); }
  function pct(v) { return v === null || v === undefined ? "–" : Math.round(v * 100) + "%"; }
  function clock(t) { return new Date(t * 1000).toLocaleTimeString([], { hour12: false }); }
  function ago(t, now) {
    var s = Math.max(0, now - t);
    return s < 60 ? Math.round(s) + " s ago" : s < 3600 ? Math.round(s / 60) + " min ago" : Math.round(s / 3600) + " h ago";
  }

  // -- the key ------------------------------------------------------------------------------------------

  function showGate(message) {
    stop();
    $("board").hidden = true;
    $("gate").hidden = false;
    $("forget-key").hidden = true;
    $("flower-link").hidden = true;
    $("pool-status").innerHTML = "";
    $("footer").textContent = "";
    var error = $("key-error");
    error.hidden = !message;
    error.textContent = message || "";
    $("key-input").focus();
  }

  function showBoard() {
    $("gate").hidden = true;
    $("board").hidden = false;
    $("forget-key").hidden = false;
  }

  $("key-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var key = $("key-input").value.trim();
    if (!key) { return; }
    sessionStorage.setItem(KEY_ITEM, key);
    $("key-input").value = "";
    $("key-error").hidden = true;
    start();
  });

  $("forget-key").addEventListener("click", function () {
    sessionStorage.removeItem(KEY_ITEM);
    state.points = []; state.since = 0; state.trails = {};
    showGate();
  });

  // -- polling ------------------------------------------------------------------------------------------

  function start() {
    if (state.running) { return; }
    state.running = true;
    poll();
  }

  function stop() {
    state.running = false;
    if (state.timer) { clearTimeout(state.timer); state.timer = null; }
  }

  function poll() {
    var key = sessionStorage.getItem(KEY_ITEM);
    if (!key) { showGate(); return; }
    fetch("/api/v1/dashboard?since=" + state.since, { headers: { Authorization: "Bearer " + key }, cache: "no-store" })
      .then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (body) { return { response: response, body: body }; });
      })
      .then(function (r) {
        if (r.response.status === 401 || r.response.status === 403) {
          sessionStorage.removeItem(KEY_ITEM);
          showGate((r.body.title || "Refused") + ": " + (r.body.detail || "HTTP " + r.response.status));
          return;
        }
        if (!r.response.ok) { throw new Error((r.body.detail || r.body.title || "") + " (HTTP " + r.response.status + ")"); }
        showBoard();
        render(r.body);
        $("footer").className = "";
        $("footer").textContent = "Updated " + clock(r.body.now) + " · every " + POLL_MS / 1000 + " s from /api/v1/dashboard";
      })
      .catch(function (error) {
        $("footer").className = "bad";
        $("footer").textContent = "Cannot reach the API: " + error.message + " — retrying";
      })
      .then(function () {
        if (state.running) { state.timer = setTimeout(poll, POLL_MS); }
      });
  }

  // -- drawing ------------------------------------------------------------------------------------------

  $("plane-zoom").addEventListener("click", function () {
    state.zoom = !state.zoom;
    if (state.last) { renderPlane(state.last); }
  });

  function render(d) {
    state.last = d;
    state.queues = d.queues;
    d.series.forEach(function (p) { state.points.push(p); });
    if (d.series.length) { state.since = d.series[d.series.length - 1].t; }
    var cutoff = d.now - WINDOW_S;
    while (state.points.length && state.points[0].t < cutoff) { state.points.shift(); }
    renderStatus(d);
    renderPlane(d);
    renderCharts();
    renderQueues();
    renderNodes(d);
    renderEvents(d);
    renderTasks(d);
  }

  function renderStatus(d) {
    var p = d.pool;
    var pills = [];
    pills.push('<span class="pill">policy <b>' + esc(p.policy) + "</b></span>");
    var lbhClass = p.lbh === null ? "warn" : p.lbh < 0 ? "bad" : "good";
    pills.push('<span class="pill ' + lbhClass + '" id="lbh-now">LBH <b>' + fixed(p.lbh, 3) + "</b></span>");
    pills.push('<span class="pill">Dis_ave <b>' + fixed(p.dis_ave, 3) + "</b></span>");
    var serving = p.nodes_serving + "/" + p.nodes_registered;
    pills.push('<span class="pill ' + (p.nodes_serving < p.nodes_registered ? "warn" : "good") + '">serving <b>' + esc(serving) + "</b></span>");
    pills.push('<span class="pill">snapshot <b>' + (p.snapshot_age_s === null ? "none" : fixed(p.snapshot_age_s, 1) + " s") + "</b></span>");
    var rps = lastRate("requests"), rpc = lastRate("rpc"), tps = lastRate("confirmed");
    var total = rps === null && rpc === null ? null : (rps || 0) + (rpc || 0);
    pills.push('<span class="pill" id="rps-now" data-value="' + (total === null ? "" : total) + '">req/s <b>' + fixed(total, 1) + "</b></span>");
    pills.push('<span class="pill" id="tps-now" data-value="' + (tps === null ? "" : tps) + '">tx/s <b>' + fixed(tps, 1) + "</b></span>");
    if (p.stale) { pills.push('<span class="pill bad"><b>STALE</b></span>'); }
    if (p.paused) { pills.push('<span class="pill bad"><b>PAUSED</b> LBH &lt; 0</span>'); }
    $("pool-status").innerHTML = pills.join("");
    var flower = $("flower-link");
    flower.href = d.flower_url;
    flower.hidden = false;
  }

  // Plane coordinates to the SVG's; shapes beyond the plane are clipped (#plane-clip), nodes beyond it sit on its edge.
  function px(v) { return +(MARGIN + v * SCALE).toFixed(1); }
  function py(v) { return +(SIZE - MARGIN - v * SCALE).toFixed(1); }
  function nx(v) { return px(Math.min(v, EXTENT)); }
  function ny(v) { return py(Math.min(v, EXTENT)); }
  function quarter(r) {  // a quarter disc of radius r around the origin, as a path
    var R = (r * SCALE).toFixed(1);
    return "M " + px(0) + " " + py(0) + " L " + px(r) + " " + py(0) + " A " + R + " " + R + " 0 0 0 " + px(0) + " " + py(r) + " Z";
  }
  function arc(r, attrs) {
    var R = (r * SCALE).toFixed(1);
    return '<path d="M ' + px(r) + " " + py(0) + " A " + R + " " + R + " 0 0 0 " + px(0) + " " + py(r) + '" fill="none" clip-path="url(#plane-clip)" ' + attrs + "/>";
  }

  function niceStep(extent) {
    var steps = [0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5];
    for (var i = 0; i < steps.length; i++) { if (extent / steps[i] <= 4) { return steps[i]; } }
    return 0.5;
  }

  function renderPlane(d) {
    var p = d.pool, parts = [];
    // "Zoom to the nodes": the plane shrinks to the farthest node (idle nodes sit near the origin).
    var far = Math.max.apply(null, d.nodes.map(function (n) { return n.plane ? Math.max(n.plane.x, n.plane.y) : 0; }).concat([0]));
    EXTENT = state.zoom ? Math.min(Math.max(far * 1.5, 0.05), FULL_EXTENT) : FULL_EXTENT;
    SCALE = (SIZE - 2 * MARGIN) / EXTENT;
    var step = niceStep(EXTENT), ticks = [];
    for (var t = step; t <= EXTENT + 1e-9; t += step) { ticks.push(+t.toFixed(3)); }
    var recycle = p.recycle_distance && p.recycle_distance < EXTENT * Math.SQRT2 ? p.recycle_distance : null;
    // Zones, painted outward in: III beyond the recycle distance, II beyond Dis_ave, I inside it.
    parts.push('<clipPath id="plane-clip"><rect x="' + px(0) + '" y="' + py(EXTENT) + '" width="' + (EXTENT * SCALE) + '" height="' + (EXTENT * SCALE) + '"/></clipPath>');
    parts.push('<g clip-path="url(#plane-clip)">');
    parts.push('<rect x="' + px(0) + '" y="' + py(EXTENT) + '" width="' + (EXTENT * SCALE) + '" height="' + (EXTENT * SCALE) + '" fill="' +
               (recycle ? "#fbe4e4" : "#fff3df") + '"/>');
    if (recycle) { parts.push('<path d="' + quarter(recycle) + '" fill="#fff3df"/>'); }
    if (p.dis_ave !== null) { parts.push('<path d="' + quarter(p.dis_ave) + '" fill="#e6f4e7"/>'); }
    if (EXTENT >= 1) {
      parts.push('<rect x="' + px(0) + '" y="' + py(1) + '" width="' + SCALE + '" height="' + SCALE + '" fill="none" stroke="#c5cdd6" stroke-dasharray="2 3"/>');
    }
    parts.push("</g>");
    ticks.forEach(function (t) {
      parts.push('<line x1="' + px(t) + '" y1="' + py(0) + '" x2="' + px(t) + '" y2="' + (py(0) + 4) + '" stroke="#52606d"/>');
      parts.push('<text x="' + px(t) + '" y="' + (py(0) + 16) + '" text-anchor="middle">' + t + "</text>");
      parts.push('<text x="' + (px(0) - 8) + '" y="' + (py(t) + 4) + '" text-anchor="end">' + t + "</text>");
    });
    parts.push('<line x1="' + px(0) + '" y1="' + py(0) + '" x2="' + px(EXTENT) + '" y2="' + py(0) + '" stroke="#52606d" stroke-width="1.5"/>');
    parts.push('<line x1="' + px(0) + '" y1="' + py(0) + '" x2="' + px(0) + '" y2="' + py(EXTENT) + '" stroke="#52606d" stroke-width="1.5"/>');
    parts.push('<text class="axis-label" x="' + px(EXTENT) + '" y="' + (py(0) + 32) + '" text-anchor="end">memory →</text>');
    parts.push('<text class="axis-label" x="' + (px(0) - 34) + '" y="' + (py(EXTENT) - 10) + '">↑ cpu</text>');
    if (p.dis_ave !== null) {
      var zl = p.dis_ave / 2.6;
      parts.push('<text class="zone-label" x="' + px(Math.min(zl, EXTENT * 0.35)) + '" y="' + py(Math.min(zl, EXTENT * 0.35)) + '" style="fill:#2e7d32" text-anchor="middle">ZONE I</text>');
      var z2 = recycle ? (p.dis_ave + recycle) / 2 / Math.SQRT2 : Math.min(p.dis_ave + 0.3, 1.3) / Math.SQRT2;
      if (z2 < EXTENT) { parts.push('<text class="zone-label" x="' + px(z2) + '" y="' + py(z2) + '" style="fill:#ef8f00" text-anchor="middle">ZONE II</text>'); }
      var cal = p.calibration || {};
      ["dis_ave_min", "dis_ave_max"].forEach(function (k) {
        if (cal[k] !== null && cal[k] !== undefined) { parts.push(arc(cal[k], 'stroke="#90a4ae" stroke-dasharray="4 3"')); }
      });
      parts.push(arc(p.dis_ave, 'stroke="#1565c0" stroke-width="2.5"'));
      var lx = p.dis_ave * Math.cos(Math.PI / 3), ly = p.dis_ave * Math.sin(Math.PI / 3);
      if (p.dis_ave < EXTENT) {
        parts.push('<text x="' + (px(lx) + 6) + '" y="' + (py(ly) - 6) + '" style="fill:#1565c0" font-weight="700">Dis_ave ' + fixed(p.dis_ave, 3) + "</text>");
      }
    }
    if (recycle) {
      parts.push(arc(recycle, 'stroke="#c62828" stroke-width="1" stroke-dasharray="6 3"'));
      var z3 = Math.min(recycle + 0.17, 1.42) / Math.SQRT2;
      if (z3 < EXTENT) { parts.push('<text class="zone-label" x="' + px(z3) + '" y="' + py(z3) + '" style="fill:#c62828" text-anchor="middle">ZONE III</text>'); }
    }
    // Each node's recent path, then the node itself.
    var unplaced = [], labels = [];
    d.nodes.forEach(function (n) {
      if (!n.plane) { unplaced.push(n); return; }
      var trail = state.trails[n.id] || (state.trails[n.id] = []);
      var last = trail[trail.length - 1];
      if (!last || last.x !== n.plane.x || last.y !== n.plane.y) { trail.push(n.plane); }
      while (trail.length > TRAIL_POINTS) { trail.shift(); }
    });
    d.nodes.forEach(function (n) {
      if (!n.plane) { return; }
      var colour = ZONE_COLOUR[n.zone] || "#9aa5b1";
      var trail = state.trails[n.id];
      if (trail.length > 1) {
        parts.push('<polyline class="trail" stroke="' + colour + '" points="' +
                   trail.map(function (q) { return nx(q.x) + "," + ny(q.y); }).join(" ") + '"/>');
      }
    });
    d.nodes.forEach(function (n) {
      if (!n.plane) { return; }
      var x = nx(n.plane.x), y = ny(n.plane.y), colour = ZONE_COLOUR[n.zone] || "#9aa5b1";
      var busy = n.status === "draining" || n.status === "recycling";
      var ly = y + 4;
      while (labels.some(function (l) { return Math.abs(l[0] - x) < 80 && Math.abs(l[1] - ly) < 14; })) { ly += 14; }
      labels.push([x, ly]);
      var label = n.id + (n.status !== "up" ? " · " + n.status : "");
      parts.push('<g class="node zone-' + esc(n.zone) + '" data-node="' + esc(n.id) + '" data-status="' + esc(n.status) +
                 '" data-x="' + n.plane.x + '" data-y="' + n.plane.y + '">' +
                 "<title>" + esc(n.id + ": zone " + n.zone + ", " + n.status + ", d=" + fixed(n.distance, 3) +
                                  (n.zone_reason ? " (" + n.zone_reason + ")" : "") + ", in flight " + (n.inflight_live || 0)) + "</title>" +
                 (busy ? '<circle class="busy-ring" cx="' + x + '" cy="' + y + '" r="13"/>' : "") +
                 '<circle class="dot" cx="' + x + '" cy="' + y + '" r="8" fill="' + colour + '"/>' +
                 '<text x="' + (x + 13) + '" y="' + ly + '">' + esc(label) + "</text></g>");
    });
    if (unplaced.length) {
      parts.push('<text x="' + px(0) + '" y="' + (SIZE - 6) + '" style="fill:#c62828">not sampled yet: ' +
                 esc(unplaced.map(function (n) { return n.id + " (" + n.status + ")"; }).join(", ")) + "</text>");
      unplaced.forEach(function (n) {
        parts.push('<g class="node unplaced" data-node="' + esc(n.id) + '" data-status="' + esc(n.status) + '"></g>');
      });
    }
    $("plane").innerHTML = parts.join("");
    $("plane-note").textContent = d.nodes.length + " nodes · (memory, cpu) at distance d" + (state.zoom ? " · zoomed" : "");
    $("plane-zoom").textContent = state.zoom ? "Whole plane" : "Zoom to nodes";
  }

  // -- charts -------------------------------------------------------------------------------------------

  function rates(name) {
    var out = [null];
    for (var i = 1; i < state.points.length; i++) {
      var a = state.points[i - 1], b = state.points[i], dt = b.t - a.t;
      var va = a[name], vb = b[name];
      out.push(va === null || vb === null || dt <= 0 || vb < va ? null : (vb - va) / dt);
    }
    return out;
  }

  function lastRate(name) {  // the newest rate over the last few points (one beat's difference is noisy)
    var n = state.points.length;
    if (n < 2) { return null; }
    var a = state.points[Math.max(0, n - 4)], b = state.points[n - 1];
    if (a[name] === null || b[name] === null || b.t <= a.t || b[name] < a[name]) { return null; }
    return (b[name] - a[name]) / (b.t - a.t);
  }

  function chartWidth(id) { return Math.max($(id).clientWidth, 240); }

  function makeChart(id, series, opts) {
    opts = opts || {};
    var zeroLine = opts.zeroLine ? [{
      hooks: {
        drawAxes: function (u) {
          var y = u.valToPos(0, "y", true);
          if (y < u.bbox.top || y > u.bbox.top + u.bbox.height) { return; }
          var ctx = u.ctx;
          ctx.save();
          ctx.strokeStyle = "#c62828"; ctx.setLineDash([5, 4]); ctx.lineWidth = 1;
          ctx.beginPath(); ctx.moveTo(u.bbox.left, y); ctx.lineTo(u.bbox.left + u.bbox.width, y); ctx.stroke();
          ctx.restore();
        }
      }
    }] : [];
    var chart = new uPlot({
      width: chartWidth(id), height: opts.height || 130,
      cursor: { drag: { x: false, y: false } },
      legend: { live: false },
      plugins: zeroLine,
      scales: { x: { time: true, range: function (u, min, max) { return [Math.min(min, max - 60), max]; } }, y: { range: opts.range || function (u, min, max) { return [Math.min(0, min), Math.max(max * 1.15, opts.floor || 1)]; } } },
      axes: [{ stroke: "#6b7785", grid: { stroke: "#eef1f4" }, space: 70,
               values: function (u, splits) { return splits.map(function (v) { return clock(v); }); } }, { stroke: "#6b7785", size: 48, grid: { stroke: "#eef1f4" } }],
      series: [{}].concat(series)
    }, [[]].concat(series.map(function () { return []; })), $(id));
    state.charts[id] = chart;
    return chart;
  }

  function line(label, colour, fill) {
    return { label: label, stroke: colour, width: 2, fill: fill || undefined, points: { show: false },
             value: function (u, v) { return v === null ? "–" : v.toFixed(v < 10 ? 2 : 0); } };
  }

  function renderCharts() {
    if (typeof uPlot === "undefined") {
      $("footer").className = "bad";
      $("footer").textContent = "uPlot did not load (/dashboard/vendor/uPlot.iife.min.js): run `npm ci` in ESP's folder";
      return;
    }
    if (!state.charts["chart-lbh"]) {
      makeChart("chart-lbh", [line("LBH", "#1565c0", "rgba(21,101,192,0.08)"), line("Dis_ave", "#90a4ae")], {
        zeroLine: true, floor: 0.5,
        range: function (u, min, max) { return [Math.min(min, -0.2), Math.max(max * 1.15, 0.5)]; }
      });
      makeChart("chart-rps", [line("API", "#2e7d32", "rgba(46,125,50,0.08)"), line("JSON-RPC", "#8e24aa")]);
      makeChart("chart-tps", [line("confirmed", "#ef6c00", "rgba(239,108,0,0.1)")]);
    }
    var xs = state.points.map(function (p) { return p.t; });
    state.charts["chart-lbh"].setData([xs, state.points.map(function (p) { return p.lbh; }), state.points.map(function (p) { return p.dis_ave; })]);
    state.charts["chart-rps"].setData([xs, rates("requests"), rates("rpc")]);
    state.charts["chart-tps"].setData([xs, rates("confirmed")]);
    if (!state.charts["chart-queues"] && state.queues.length) {
      makeChart("chart-queues", state.queues.map(function (q, i) { return line(q.replace(/^esp\./, ""), QUEUE_COLOURS[i % QUEUE_COLOURS.length]); }), { height: 250 });
    }
    if (state.charts["chart-queues"]) {
      state.charts["chart-queues"].setData([xs].concat(state.queues.map(function (q) {
        return state.points.map(function (p) { return p.queues[q] === undefined ? null : p.queues[q]; });
      })));
    }
  }

  window.addEventListener("resize", function () {
    Object.keys(state.charts).forEach(function (id) { state.charts[id].setSize({ width: chartWidth(id), height: state.charts[id].height }); });
  });

  function renderQueues() {
    var last = state.points[state.points.length - 1];
    $("queue-now").innerHTML = state.queues.map(function (q) {
      var n = last && last.queues[q] !== undefined ? last.queues[q] : "–";
      return '<div data-queue="' + esc(q) + '"><span>' + esc(q.replace(/^esp\./, "")) + "</span><b>" + esc(n) + "</b></div>";
    }).join("");
  }

  function renderNodes(d) {
    $("node-table").tBodies[0].innerHTML = d.nodes.map(function (n) {
      var raw = n.raw || {};
      return "<tr data-node-row=\"" + esc(n.id) + "\"><td><b>" + esc(n.id) + "</b></td><td>" + esc(n.role) + "</td>" +
        '<td><span class="zone-tag zone-' + esc(n.zone || "none") + '">' + esc(n.zone || "–") + "</span></td>" +
        '<td class="status-' + esc(n.status) + '">' + esc(n.status) + (n.zone_reason ? ' <small>(' + esc(n.zone_reason) + ")</small>" : "") + "</td>" +
        '<td class="num">' + fixed(n.distance, 3) + '</td><td class="num">' + pct(raw.cpu) + '</td><td class="num">' + pct(raw.memory) +
        '</td><td class="num">' + (n.latency_ms === null || n.latency_ms === undefined ? "–" : fixed(n.latency_ms, 1) + " ms") +
        '</td><td class="num">' + esc(n.inflight_live === undefined ? "–" : n.inflight_live) + '</td><td class="num">' + esc(n.head === null ? "–" : n.head) + "</td></tr>";
    }).join("");
  }

  function eventClass(kind) {
    if (/^recycle/.test(kind)) { return "recycle"; }
    if (/leader|failover|promot/.test(kind)) { return "failover"; }
    return "state";
  }

  function eventDetail(e) {
    var data = e.data || {};
    if (e.kind === "status-changed" || e.kind === "zone-changed") { return (data.old || "–") + " → " + (data.new || "–") + (data.reason ? " · " + data.reason : ""); }
    return Object.keys(data).map(function (k) { return k + "=" + (typeof data[k] === "object" ? JSON.stringify(data[k]) : data[k]); }).join("  ");
  }

  function renderEvents(d) {
    if (!d.events.length) { $("events").innerHTML = '<li class="empty">no events yet</li>'; return; }
    $("events").innerHTML = d.events.map(function (e) {
      return '<li><time title="' + esc(new Date(e.at * 1000).toISOString()) + '">' + esc(clock(e.at)) + "</time>" +
        '<span><span class="kind ' + eventClass(e.kind) + '">' + esc(e.kind) + "</span> " + esc(e.node) + "</span>" +
        '<span class="detail" title="' + esc(eventDetail(e)) + '">' + esc(eventDetail(e)) + "</span></li>";
    }).join("");
  }

  function renderTasks(d) {
    var body = $("tasks").tBodies[0];
    if (!d.tasks.length) { body.innerHTML = '<tr><td colspan="5" class="empty">no tasks yet</td></tr>'; return; }
    body.innerHTML = d.tasks.map(function (t) {
      return "<tr><td><a class=\"task-link\" href=\"" + esc(t.status_url) + "\" data-task=\"" + esc(t.id) + "\">" + esc(t.id.slice(0, 8)) + "</a></td>" +
        "<td>" + esc(t.operation) + '</td><td class="state-' + esc(t.state) + '">' + esc(t.state) + "</td><td>" + esc(t.node || "–") +
        '</td><td class="num">' + esc(ago(t.updated_at, d.now)) + "</td></tr>";
    }).join("");
  }

  // A task's link opens its record here, fetched with the key (a plain link would carry no Authorization header).
  $("tasks").addEventListener("click", function (event) {
    var link = event.target.closest("a.task-link");
    if (!link) { return; }
    event.preventDefault();
    var detail = $("task-detail");
    fetch(link.getAttribute("href"), { headers: { Authorization: "Bearer " + sessionStorage.getItem(KEY_ITEM) }, cache: "no-store" })
      .then(function (r) { return r.json(); })
      .then(function (body) { detail.hidden = false; detail.textContent = "GET " + link.getAttribute("href") + "\n" + JSON.stringify(body, null, 2); })
      .catch(function (error) { detail.hidden = false; detail.textContent = String(error); });
  });

  if (sessionStorage.getItem(KEY_ITEM)) { start(); } else { showGate(); }
}());
