// pgtasks dashboard: live updates (Server-Sent Events), the charts, and the
// actions, which call the JSON API with the token this tab logged in with. Hand-written,
// no dependencies, no build step.
"use strict";
(() => {
  const body = document.body;
  const BASE = body.dataset.base;
  const API = body.dataset.api;
  const TOKEN_KEY = "pgtasks-token";
  const FLASH_KEY = "pgtasks-flash";
  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

  // -- times: "3 min ago", the exact time on hover ------------------------------------
  function span(s) {
    s = Math.abs(s);
    if (s < 60) return `${Math.round(s)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min`;
    if (s < 86400) return `${Math.floor(s / 3600)} h`;
    return `${Math.floor(s / 86400)} d`;
  }
  function relative(iso) {
    const d = (new Date(iso).getTime() - Date.now()) / 1000;
    if (Math.abs(d) < 1) return "just now";
    return d > 0 ? `in ${span(d)}` : `${span(d)} ago`;
  }
  function timeTag(iso) {
    if (!iso) return '<span class="muted">—</span>';
    const t = document.createElement("time");
    t.dateTime = iso;
    t.title = new Date(iso).toISOString().replace("T", " ").replace(/\..*/, " UTC");
    t.dataset.rel = "";
    t.textContent = relative(iso);
    return t.outerHTML;
  }
  function refreshTimes() {
    for (const t of $$("time[data-rel]")) t.textContent = relative(t.dateTime);
  }
  setInterval(refreshTimes, 5000);

  const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  const ICON = { PENDING: "○", COMMIT: "◐", RUNNING: "▶", DONE: "✓", FAILED: "✕", CANCELLED: "⊘", WAITING: "…" };
  const badge = (s) =>
    `<span class="badge s-${s.toLowerCase()}"><span aria-hidden="true">${ICON[s] || "•"}</span> ${s}</span>`;

  // -- messages -----------------------------------------------------------------------
  function flash(text, bad = false) {
    const f = $("#flash");
    if (!f) return;
    f.hidden = false;
    f.textContent = text;
    f.classList.toggle("bad", bad);
  }
  const kept = sessionStorage.getItem(FLASH_KEY);
  if (kept) {
    sessionStorage.removeItem(FLASH_KEY);
    const { text, bad } = JSON.parse(kept);
    flash(text, bad);
  }

  // -- auth: the token lives in this tab's sessionStorage ------------------------------
  const login = $("form[data-login]");
  if (login) login.addEventListener("submit", () => sessionStorage.setItem(TOKEN_KEY, login.token.value.trim()));
  const logout = $("form[data-logout]");
  if (logout) logout.addEventListener("submit", () => sessionStorage.removeItem(TOKEN_KEY));

  async function call(method, url, payload) {
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    if (payload !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(url, { method, headers, body: payload === undefined ? undefined : JSON.stringify(payload) });
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (r.status === 401) {
      sessionStorage.setItem(FLASH_KEY, JSON.stringify({ text: "Log in with the API token to do that.", bad: true }));
      location.href = `${BASE}/login?next=${encodeURIComponent(location.pathname + location.search)}`;
      throw new Error("unauthorized");
    }
    if (!r.ok) {
      const e = (data && data.error) || {};
      throw new Error(`${e.code ? `${e.code}: ` : ""}${e.message || r.statusText}${e.hint ? ` (${e.hint})` : ""}`);
    }
    return data;
  }

  function describe(data) {
    if (!data) return "Done.";
    if (data.count !== undefined) return `${data.count} task${data.count === 1 ? "" : "s"} done.`;
    if (data.previous_status) return `Task ${data.id} cancelled (it was ${data.previous_status}).`;
    if (data.status === "PENDING") return `Task ${data.id} is PENDING again.`;
    if (data.paused !== undefined && data.queue) return `Queue ${data.queue} ${data.paused ? "paused" : "resumed"}.`;
    if (data.task_id) return `Schedule ${data.name} enqueued task ${data.task_id}.`;
    if (data.paused !== undefined && data.name) return `Schedule ${data.name} ${data.paused ? "paused" : "resumed"}.`;
    return "Done.";
  }

  function after(text, reload) {
    if (reload) {
      sessionStorage.setItem(FLASH_KEY, JSON.stringify({ text, bad: false }));
      location.reload();
    } else flash(text);
  }

  document.addEventListener("click", async (ev) => {
    const b = ev.target.closest("button.act");
    if (!b) return;
    let payload = b.dataset.body ? JSON.parse(b.dataset.body) : undefined;
    const bulk = b.closest("form[data-bulk]");
    if (bulk && payload === undefined) {
      const ids = $$("input[name=ids]:checked", bulk).map((i) => Number(i.value));
      if (!ids.length) { flash("Select at least one task first.", true); return; }
      payload = { ids };
    }
    if (b.dataset.confirm && !window.confirm(b.dataset.confirm)) return;
    b.disabled = true;
    try {
      const data = await call(b.dataset.method || "POST", b.dataset.url, payload);
      after(describe(data), b.dataset.reload !== undefined);
    } catch (e) {
      if (e.message !== "unauthorized") flash(`Refused: ${e.message}`, true);
    } finally {
      b.disabled = false;
    }
  });

  document.addEventListener("change", (ev) => {
    const all = ev.target.closest("input[data-select-all]");
    if (!all) return;
    for (const i of $$("input[name=ids]", all.closest("form") || document)) i.checked = all.checked;
  });

  for (const form of $$("form[data-limits]")) {
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const num = (name) => (form[name].value === "" ? null : Number(form[name].value));
      try {
        await call("PUT", form.dataset.url, {
          max_running: num("max_running"), rate_limit: num("rate_limit"), rate_period_s: num("rate_period_s"),
        });
        after("Limits saved.", true);
      } catch (e) {
        if (e.message !== "unauthorized") flash(`Refused: ${e.message}`, true);
      }
    });
  }

  // The whole definition, as PUT /schedules/{name} takes it: the database checks it (cron,
  // time zone, the every floor) and its refusal is flashed with its hint. The form holds
  // every setting, so that saving an edited schedule keeps what the edit did not touch.
  const SCHEDULE_NUMBERS = ["every_s", "priority", "catch_up_s", "misfire_grace_s"];
  for (const form of $$("form[data-schedule]")) {
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const field = (name) => form.elements[name].value.trim();
      const text = (name) => field(name) || null;
      const num = (name) => (field(name) === "" ? null : Number(field(name)));
      const name = field("name");
      let params;
      try {
        params = field("params") === "" ? {} : JSON.parse(field("params"));
      } catch (e) {
        flash(`Refused: params is not JSON (${e.message})`, true);
        return;
      }
      try {
        await call("PUT", form.dataset.url + encodeURIComponent(name), {
          task_type: text("task_type"), cron: text("cron"), timezone: text("timezone") || "UTC",
          every_s: num("every_s"), queue: text("queue"), params, priority: num("priority"),
          overlap: field("overlap") || "allow", catch_up_s: num("catch_up_s") ?? 0,
          misfire_grace_s: num("misfire_grace_s"),
        });
        after(`Schedule ${name} saved.`, true);
      } catch (e) {
        if (e.message !== "unauthorized") flash(`Refused: ${e.message}`, true);
      }
    });
  }

  // "Edit": the row's whole definition as GET /schedules answers it, into the form.
  document.addEventListener("click", async (ev) => {
    const b = ev.target.closest("button[data-edit-schedule]");
    const form = $("form[data-schedule]");
    if (!b || !form) return;
    const name = b.dataset.editSchedule;
    try {
      const s = (await call("GET", `${API}/schedules`)).find((r) => r.name === name);
      if (!s) { flash(`Schedule ${name} is gone.`, true); return; }
      const set = (field, value) => { form.elements[field].value = value == null ? "" : String(value); };
      set("name", s.name);
      set("task_type", s.task_type);
      set("cron", s.cron);
      set("timezone", s.timezone || "UTC");
      set("queue", s.queue);
      set("params", typeof s.params === "string" ? s.params : JSON.stringify(s.params ?? {}));
      set("overlap", s.overlap || "allow");
      const seconds = { every_s: s.every, priority: s.priority, catch_up_s: s.catch_up ?? 0,
                        misfire_grace_s: s.misfire_grace };
      for (const k of SCHEDULE_NUMBERS) set(k, seconds[k]);
      form.elements.name.focus();
      flash(`Editing schedule ${name}: change the form, then save.`);
    } catch (e) {
      if (e.message !== "unauthorized") flash(`Refused: ${e.message}`, true);
    }
  });

  // An event to a task (POST /tasks/{id}/events/{name}), the payload as typed (none:
  // null). A task waiting for it runs again; the database refuses one that has ended.
  for (const form of $$("form[data-send-event]")) {
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const name = form.elements.event.value.trim();
      const raw = form.elements.payload.value.trim();
      let payload;
      try {
        payload = raw === "" ? undefined : JSON.parse(raw);
      } catch (e) {
        flash(`Refused: the payload is not JSON (${e.message})`, true);
        return;
      }
      try {
        const data = await call("POST", form.dataset.url + encodeURIComponent(name), payload);
        after(data.delivered ? `Event ${name} sent to task ${data.id}.`
          : `Task ${data.id} already had event ${name}; the first is kept.`, true);
      } catch (e) {
        if (e.message !== "unauthorized") flash(`Refused: ${e.message}`, true);
      }
    });
  }

  function liveState(on) {
    for (const el of $$("[data-live-state]")) {
      el.textContent = on ? "live" : "reconnecting…";
      el.classList.toggle("off", !on);
    }
  }

  // -- overview: the charts, from the database's roll-up (GET charts?span=) -------------
  // A duration to the precision it deserves, as the server's views.duration writes it.
  function dur(s) {
    s = Math.max(Number(s) || 0, 0);
    if (s < 1) return `${s.toFixed(2)} s`;
    if (s < 10) return `${s.toFixed(1)} s`;
    if (s < 60) return `${Math.round(s)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }
  const SPANS = {
    "5m": { label: "5 minutes", ago: "5 min ago", every: 10000 },
    "1h": { label: "hour", ago: "1 h ago", every: 10000 },
    "24h": { label: "24 hours", ago: "24 h ago", every: 60000 },
  };
  // Per chart: the two series drawn (solid, dashed) and whether they are seconds.
  const CHARTS = {
    throughput: { keys: ["done", "failed"], cls: ["done", "failed"], seconds: false },
    run: { keys: ["run_p50", "run_p95"], cls: ["p50", "p95"], seconds: true },
    wait: { keys: ["wait_p50", "wait_p95"], cls: ["p50", "p95"], seconds: true },
    depth: { keys: ["ready", "running"], cls: ["p50", "p95"], seconds: false },
  };
  let chartSpan = "5m";
  let chartTimer = null;

  function values(buckets, key) {
    return buckets.map((b) => b[key]).filter((v) => v != null).map(Number);
  }
  const most = (xs) => (xs.length ? Math.max(...xs) : null);
  const sum = (xs) => xs.reduce((a, b) => a + b, 0);

  function summary(id, buckets, label) {
    if (id === "throughput") {
      const d = sum(values(buckets, "done")), f = sum(values(buckets, "failed"));
      const c = sum(values(buckets, "cancelled"));
      return `${d} done, ${f} failed, ${c} cancelled in the last ${label}.`;
    }
    if (id === "depth") {
      const ready = values(buckets, "ready");
      return ready.length ? `Ready: ${ready[ready.length - 1]} at the last sample, ${most(ready)} at most.`
        : "No depth sample in this range.";
    }
    const n = sum(values(buckets, `${id}_count`));
    if (!n) return `No task ${id === "run" ? "ran" : "waited"} in this range.`;
    return `${n} task${n === 1 ? "" : "s"}; p50 up to ${dur(most(values(buckets, `${id}_p50`)))}, ` +
      `p95 up to ${dur(most(values(buckets, `${id}_p95`)))}, longest ${dur(most(values(buckets, `${id}_max`)))}.`;
  }

  function drawCharts(data) {
    const root = $("#charts");
    if (!root || !data) return;
    const buckets = data.buckets || [];
    const span = SPANS[data.span] || SPANS["5m"];
    const width = buckets.length ? Number(buckets[0].width_s) : 10;
    const per = width >= 60 ? `${width / 60} min` : `${width} s`;
    $("[data-chart-span-label]", root).textContent = span.label;
    for (const b of $$("button[data-span]", root)) b.setAttribute("aria-pressed", String(b.dataset.span === data.span));
    const rolled = buckets.filter((b) => b.rolled);
    const upTo = rolled.length ? new Date(new Date(rolled[rolled.length - 1].bucket).getTime() + width * 1000) : null;
    $("[data-chart-rolled]", root).innerHTML = upTo ? `The last bucket rolled up ended ${timeTag(upTo.toISOString())}.` : "Nothing rolled up yet.";
    const W = 600, top = 4, bottom = 116, n = buckets.length;
    const x = (i) => (n <= 1 ? W : (i / (n - 1)) * W);
    for (const [id, spec] of Object.entries(CHARTS)) {
      const fig = $(`[data-chart=${id}]`, root);
      if (!fig) continue;
      let max = 0;
      for (const k of spec.keys) max = Math.max(max, most(values(buckets, k)) || 0);
      const scale = max > 0 ? max : 1;
      const y = (v) => bottom - (v / scale) * (bottom - top);
      // A bucket without a value (not rolled up yet; no task ran in it) breaks the line; a
      // lone point is a short dash, so it still shows.
      const path = (key) => {
        const parts = [];
        let pen = false;
        buckets.forEach((b, i) => {
          if (b[key] == null) { pen = false; return; }
          const p = `${x(i).toFixed(1)},${y(Number(b[key])).toFixed(1)}`;
          parts.push(pen ? `L${p}` : `M${p} h2`);
          pen = true;
        });
        return parts.join(" ");
      };
      const lines = spec.keys.map((k, i) => `<path class="${spec.cls[i]}" d="${path(k)}"/>`).join("");
      $("svg", fig).innerHTML =
        `<line class="grid-line" x1="0" x2="${W}" y1="${top}" y2="${top}"/>` +
        `<line class="grid-line" x1="0" x2="${W}" y1="${bottom}" y2="${bottom}"/>` + lines;
      $("[data-chart-max]", fig).textContent = spec.seconds ? (max ? dur(max) : "—") : `${max} ${id === "throughput" ? `per ${per}` : "tasks"}`;
      $("[data-chart-unit]", fig).textContent = id === "throughput" ? `tasks per ${per}` : (spec.seconds ? "per bucket" : "sampled");
      $("[data-chart-start]", fig).textContent = span.ago;
      $("[data-chart-summary]", fig).textContent = summary(id, buckets, span.label);
    }
  }

  async function loadCharts(span) {
    try {
      const r = await fetch(`${BASE}/charts?span=${encodeURIComponent(span)}`, { headers: { Accept: "application/json" } });
      if (!r.ok) return;
      const data = await r.json();
      if (data.span === chartSpan) drawCharts(data);
    } catch (e) { /* the next tick tries again */ }
  }

  function chartEvery(span) {
    if (chartTimer) clearInterval(chartTimer);
    chartTimer = setInterval(() => loadCharts(chartSpan), SPANS[span].every);
  }

  document.addEventListener("click", (ev) => {
    const b = ev.target.closest("#charts button[data-span]");
    if (!b || !SPANS[b.dataset.span]) return;
    chartSpan = b.dataset.span;
    for (const o of $$("#charts button[data-span]")) o.setAttribute("aria-pressed", String(o === b));
    loadCharts(chartSpan);
    chartEvery(chartSpan);
  });

  function limits(q) {
    const parts = [];
    if (q.max_running) parts.push(`${q.max_running} running`);
    if (q.rate_limit) parts.push(`${q.rate_limit} per ${span(q.rate_period || 1)}`);
    return parts.length ? parts.join(", ") : "none";
  }

  // The counts a queue card shows, by their key in the overview stream's rows.
  const COUNTS = ["ready", "scheduled", "running", "waiting_on_parents", "failed"];

  function updateCards(queues) {
    const box = $("#queue-cards");
    if (!box) return;
    const seen = new Set();
    for (const q of queues) {
      seen.add(q.queue);
      let card = $$(".qcard", box).find((c) => c.dataset.queue === q.queue);
      if (!card) {
        const empty = $("[data-empty]", box);
        if (empty) empty.remove();
        card = $("#queue-card-template").content.firstElementChild.cloneNode(true);
        card.dataset.queue = q.queue;
        const a = $("h3 a", card);
        a.textContent = q.queue;
        a.href = `${BASE}/tasks?queue=${encodeURIComponent(q.queue)}`;
        $("h3", card).id = `q-${q.queue}`;
        card.setAttribute("aria-labelledby", `q-${q.queue}`);
        box.appendChild(card);
      }
      for (const k of COUNTS) $(`[data-field=${k}]`, card).textContent = q[k];
      $("[data-field=oldest_ready_age]", card).textContent = q.oldest_ready_age == null ? "—" : span(q.oldest_ready_age);
      $("[data-field=paused]", card).hidden = !q.paused;
      $("[data-field=limits]", card).textContent = limits(q);
    }
    // A queue that drained keeps its card, at zero, until the page is loaded again.
    for (const card of $$(".qcard", box)) {
      if (seen.has(card.dataset.queue)) continue;
      for (const k of COUNTS) $(`[data-field=${k}]`, card).textContent = "0";
      $("[data-field=oldest_ready_age]", card).textContent = "—";
    }
  }

  // What a worker runs now: its tasks (as the template's worker_tasks macro draws them).
  function workerTasks(w) {
    const tasks = w.tasks || [];
    const rows = tasks.map((t) =>
      `<div><a href="${BASE}/tasks/${Number(t.id)}"${t.progress_message ? ` title="${esc(t.progress_message)}"` : ""}>` +
      `#${Number(t.id)} ${esc(t.task_type)}</a> ` +
      `<span class="muted">${t.percent == null ? "" : `${Math.round(t.percent)}% · `}` +
      `<span class="dur" title="${Number(t.running_for).toFixed(3)} s">${dur(t.running_for)}</span></span></div>`);
    if (!rows.length) rows.push('<span class="muted">—</span>');
    if (w.more) rows.push(`<div class="muted">+${Number(w.more)} more</div>`);
    return rows.join("");
  }

  function updateWorkers(workers) {
    const tb = $("#workers");
    if (!tb) return;
    const c = $("[data-workers-count]");
    if (c) c.textContent = workers.length;
    tb.innerHTML = workers.length
      ? workers.map((w) =>
          `<tr><td>${esc(w.worker_id)}</td><td>${esc(w.host)} / ${w.pid}</td>` +
          `<td>${esc((w.queues || ["all"]).join(", "))}</td><td>${w.running} / ${w.concurrency}</td>` +
          `<td class="wtasks">${workerTasks(w)}</td>` +
          `<td>${timeTag(w.started_at)}</td><td>${timeTag(w.last_seen)}</td></tr>`).join("")
      : '<tr><td colspan="7" class="muted">No live worker.</td></tr>';
  }

  function applyOverview(data) {
    updateCards(data.queues);
    updateWorkers(data.workers);
  }

  const initial = $("#overview-data");
  if (initial) {
    const data = JSON.parse(initial.textContent);
    drawCharts(data.chart);
    chartEvery(chartSpan);
    const es = new EventSource(`${BASE}/stream/overview`);
    es.addEventListener("overview", (e) => { liveState(true); applyOverview(JSON.parse(e.data)); });
    es.addEventListener("error", () => liveState(false));
  }

  // -- workflow: redraw the graph every 2 s while it runs ------------------------------
  const wf = $("#workflow[data-live-refresh='1']");
  if (wf) {
    const timer = setInterval(async () => {
      try {
        const r = await fetch(location.href, { headers: { Accept: "text/html" } });
        if (!r.ok) return;
        const doc = new DOMParser().parseFromString(await r.text(), "text/html");
        const fresh = doc.querySelector("#workflow");
        if (!fresh) return;
        if (!wf.contains(document.activeElement)) wf.innerHTML = fresh.innerHTML;
        if (fresh.dataset.liveRefresh !== "1") clearInterval(timer);
      } catch (e) { /* the next tick tries again */ }
    }, 2000);
  }

  // -- task detail: status, progress and log lines as they happen ----------------------
  const task = $("#task");
  if (task && task.dataset.finished === "0") {
    const id = task.dataset.taskId;
    const logs = $("#logs");
    let last = Number(task.dataset.lastLog || 0);
    const show = (info) => {
      $("[data-field=status]", task).innerHTML = badge(info.status);
      $("[data-field=attempt]", task).textContent = info.attempt;
      const bar = $("#task-progress");
      const label = $("[data-field=progress]", task);
      $("[data-field=worker]", task).textContent = info.worker_id || "—";
      if (info.started_at) $("[data-field=started]", task).innerHTML = timeTag(info.started_at);
      if (info.percent != null) {
        bar.hidden = false;
        bar.value = info.percent;
        label.textContent = `${Math.round(info.percent)}% (${info.progress_current} / ${info.progress_total})`;
      } else if (info.progress_current != null) {
        label.textContent = `${info.progress_current}`;
      }
      $("[data-field=message]", task).textContent = info.progress_message || "";
    };
    const es = new EventSource(`${BASE}/stream/tasks/${id}?after_id=${last}`);
    es.addEventListener("open", () => liveState(true));
    es.addEventListener("status", (e) => show(JSON.parse(e.data)));
    es.addEventListener("progress", (e) => show(JSON.parse(e.data)));
    es.addEventListener("log", (e) => {
      const l = JSON.parse(e.data);
      if (l.id <= last) return;
      last = l.id;
      const none = $("#no-logs");
      if (none) none.remove();
      const li = document.createElement("li");
      li.dataset.log = l.id;
      const at = new Date(l.at);
      li.innerHTML = `<time datetime="${esc(l.at)}" title="${esc(l.at)}">${at.toTimeString().slice(0, 8)}</time> ` +
        `<span class="lvl lvl-${esc(l.level.toLowerCase())}">${esc(l.level)}</span> ${esc(l.message)}`;
      logs.appendChild(li);
      logs.scrollTop = logs.scrollHeight;
    });
    es.addEventListener("end", (e) => {
      es.close();
      show(JSON.parse(e.data));
      // The finished page has the result, the errors and the whole history.
      setTimeout(() => location.reload(), 300);
    });
    es.addEventListener("error", () => liveState(false));
  }
})();
