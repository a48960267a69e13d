// The status page: asks for the admin key, keeps it in sessionStorage (never in a URL, never
// in storage that outlives the tab), polls /admin/live with it and draws what it gets. Text
// goes into the DOM with textContent only: key labels and model names come from config and
// clients.
"use strict";

(function () {
  const KEY_NAME = "sophgate.adminKey";
  const POLL_MS = 3000;
  const SVG = "http://www.w3.org/2000/svg";
  let timer = null;

  const $ = (id) => document.getElementById(id);

  function storedKey() {
    try { return sessionStorage.getItem(KEY_NAME); } catch (_) { return null; }
  }

  function showLogin(message) {
    if (timer) { clearTimeout(timer); timer = null; }
    $("dashboard").hidden = true;
    $("sign-out").hidden = true;
    $("login").hidden = false;
    $("login-message").textContent = message || "";
    setConn("not connected", "");
    $("key-input").focus();
  }

  function showDashboard() {
    $("login").hidden = true;
    $("dashboard").hidden = false;
    $("sign-out").hidden = false;
  }

  function setConn(text, cls) {
    const c = $("conn");
    c.textContent = text;
    c.className = "conn " + cls;
  }

  async function poll() {
    const key = storedKey();
    if (!key) { showLogin(""); return; }
    let resp;
    try {
      resp = await fetch("/admin/live", {
        headers: { "Authorization": "Bearer " + key },
        cache: "no-store",
        credentials: "omit",
      });
    } catch (e) {
      setConn("gateway unreachable, retrying", "down");
      timer = setTimeout(poll, POLL_MS);
      return;
    }
    if (resp.status === 401) {
      try { sessionStorage.removeItem(KEY_NAME); } catch (_) { /* nothing kept */ }
      showLogin("The gateway refused this admin key (401). Enter the key from admin.key.");
      return;
    }
    if (!resp.ok) {
      setConn("gateway answered " + resp.status + ", retrying", "down");
      timer = setTimeout(poll, POLL_MS);
      return;
    }
    let data;
    try { data = await resp.json(); } catch (e) {
      setConn("unreadable answer, retrying", "down");
      timer = setTimeout(poll, POLL_MS);
      return;
    }
    showDashboard();
    render(data);
    setConn("live · every " + POLL_MS / 1000 + " s", "live");
    timer = setTimeout(poll, POLL_MS);
  }

  function fmt(n, digits) {
    if (n === null || n === undefined) return "–";
    return Number(n).toLocaleString("en-US", { maximumFractionDigits: digits === undefined ? 0 : digits });
  }

  function ms(v) {
    if (v === null || v === undefined) return "–";
    if (v >= 1000) return fmt(v / 1000, 2) + " s";
    return fmt(v, v < 10 ? 2 : 0) + " ms";
  }

  function time(unix) {
    return new Date(unix * 1000).toLocaleTimeString("en-GB", { hour12: false });
  }

  function render(d) {
    $("stat-rps").textContent = fmt(d.rates.requests_per_s, 1);
    $("stat-error-rate").textContent = fmt(d.rates.error_rate * 100, 1) + " %";
    $("stat-ttft-p50").textContent = ms(d.ttft_ms.p50);
    $("stat-ttft-p95").textContent = ms(d.ttft_ms.p95);
    $("stat-inflight-requests").textContent = fmt(d.inflight.requests);
    $("stat-inflight-streams").textContent = fmt(d.inflight.streams);
    renderChart(d.series);
    renderConfig(d.config);
    renderUpstreams(d.upstreams);
    renderTokens("tokens-keys", d.tokens_per_min.keys);
    renderTokens("tokens-models", d.tokens_per_min.models);
    renderErrors(d.errors);
    $("updated").textContent = "updated " + time(d.now) + " · up " + fmt(d.uptime_s) + " s";
  }

  function svg(name, attrs) {
    const el = document.createElementNS(SVG, name);
    for (const k in attrs) el.setAttribute(k, String(attrs[k]));
    return el;
  }

  function renderChart(series) {
    const chart = $("chart-requests");
    while (chart.firstChild) chart.removeChild(chart.firstChild);
    const W = 900, H = 180, PAD = 8;
    const n = series.requests.length;
    const max = Math.max(1, ...series.requests);
    const x = (i) => (n <= 1 ? 0 : (i / (n - 1)) * W);
    const y = (v) => H - PAD - (v / max) * (H - 2 * PAD);
    for (let k = 1; k <= 3; k++) {
      const gy = y((max * k) / 4);
      chart.appendChild(svg("line", { x1: 0, x2: W, y1: gy, y2: gy, class: "gridline" }));
    }
    const pts = (arr) => arr.map((v, i) => x(i).toFixed(1) + "," + y(v).toFixed(1)).join(" ");
    chart.appendChild(svg("polygon", {
      class: "area-requests",
      points: "0," + (H - PAD) + " " + pts(series.requests) + " " + W + "," + (H - PAD),
    }));
    chart.appendChild(svg("polyline", { class: "series-requests", points: pts(series.requests) }));
    chart.appendChild(svg("polyline", { class: "series-errors", points: pts(series.errors) }));
    // A point for every second that had traffic, so a burst is visible even when short.
    const dots = (arr, cls) => arr.forEach((v, i) => {
      if (v > 0) {
        const c = svg("circle", { cx: x(i).toFixed(1), cy: y(v).toFixed(1), r: 2.6, class: cls });
        c.dataset.value = String(v);
        c.dataset.at = String(series.start + i);
        chart.appendChild(c);
      }
    });
    dots(series.requests, "point point-requests");
    dots(series.errors, "point point-errors");
    $("chart-max").textContent = "peak " + fmt(max) + "/s";
  }

  function renderConfig(c) {
    $("generation-number").textContent = String(c.generation);
    $("generation-loaded").textContent = c.loaded_at;
    const result = $("reload-result");
    const err = $("reload-error");
    if (!c.last_reload) {
      result.textContent = "none since start";
      result.className = "";
      err.hidden = true;
      err.textContent = "";
    } else if (c.last_reload.ok) {
      result.textContent = "ok · " + c.last_reload.at + " (" + c.last_reload.trigger + ")";
      result.className = "reload-ok";
      err.hidden = true;
      err.textContent = "";
    } else {
      result.textContent = "failed · " + c.last_reload.at + " (" + c.last_reload.trigger + "); generation " + c.generation + " keeps serving";
      result.className = "reload-failed";
      err.hidden = false;
      err.textContent = c.last_reload.error || "";
    }
    $("reload-counts").textContent = fmt(c.reloads.succeeded) + " ok, " + fmt(c.reloads.failed) + " failed";
  }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function fill(tableId, rows, columns, build) {
    const body = $(tableId).tBodies[0];
    while (body.firstChild) body.removeChild(body.firstChild);
    if (rows.length === 0) {
      const tr = document.createElement("tr");
      tr.className = "empty";
      const td = cell(tr, "none yet");
      td.colSpan = columns;
      body.appendChild(tr);
      return;
    }
    rows.forEach((r) => {
      const tr = document.createElement("tr");
      build(tr, r);
      body.appendChild(tr);
    });
  }

  function renderUpstreams(list) {
    fill("upstreams", list, 7, (tr, u) => {
      tr.className = "upstream";
      tr.dataset.name = u.name;
      cell(tr, u.name, "name");
      ["ok", "http_4xx", "http_5xx", "timeout", "connect_error"].forEach((k) => {
        cell(tr, fmt(u.outcomes[k]), "num outcome-" + k);
      });
      const td = cell(tr, "", "recent");
      const dots = document.createElement("span");
      dots.className = "dots";
      u.recent.forEach((o) => {
        const dot = document.createElement("span");
        dot.className = "dot " + o;
        dot.title = o;
        dots.appendChild(dot);
      });
      td.appendChild(dots);
    });
  }

  function renderTokens(tableId, rows) {
    fill(tableId, rows, 4, (tr, r) => {
      tr.className = "token-row";
      tr.dataset.name = r.name;
      cell(tr, r.name, "name");
      cell(tr, fmt(r.input), "num input");
      cell(tr, fmt(r.output), "num output");
      cell(tr, fmt(r.input + r.output), "num total");
    });
  }

  function renderErrors(rows) {
    fill("errors", rows, 7, (tr, e) => {
      tr.className = "error-row";
      tr.dataset.requestId = e.request_id;
      cell(tr, time(e.at), "at");
      cell(tr, e.status ? String(e.status) : "–", "status status-" + String(e.status).charAt(0));
      // The gateway names every error it makes; one without a code is the upstream's answer.
      if (e.code) cell(tr, e.code, "code"); else cell(tr, "from upstream", "code upstream-said");
      cell(tr, e.key || "–", "key");
      cell(tr, e.model || "–", "model");
      cell(tr, e.route, "route");
      cell(tr, e.request_id, "request-id");
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const input = $("key-input");
      const key = input.value.trim();
      input.value = "";
      if (!key) return;
      try { sessionStorage.setItem(KEY_NAME, key); } catch (_) {
        $("login-message").textContent = "This browser refuses session storage; the page cannot keep the key.";
        return;
      }
      $("login-message").textContent = "";
      poll();
    });
    $("sign-out").addEventListener("click", () => {
      try { sessionStorage.removeItem(KEY_NAME); } catch (_) { /* nothing kept */ }
      showLogin("");
    });
    if (storedKey()) poll(); else showLogin("");
  });
})();
