// pgtasks dashboard: live updates (Server-Sent Events), the throughput chart, and the
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

  // -- overview: queue cards, throughput chart, workers --------------------------------
  const WINDOW = 300;
  const series = new Map(); // epoch second -> [done, failed]
  let serverNow = 0;

  function drawChart() {
    const svg = $("#throughput");
    if (!svg) return;
    const start = Math.floor(serverNow) - WINDOW;
    for (const t of series.keys()) if (t < start) series.delete(t);
    let max = 1;
    for (const [d, f] of series.values()) max = Math.max(max, d, f);
    const W = 600, top = 6, bottom = 154;
    const maxLabel = $("[data-chart-max]");
    if (maxLabel) maxLabel.textContent = `${max}/s`;
    const x = (t) => ((t - start) / WINDOW) * W;
    const y = (v) => bottom - (v / max) * (bottom - top);
    const line = (k) => {
      const pts = [];
      for (let t = start; t <= start + WINDOW; t++) {
        const v = series.get(t);
        pts.push(`${x(t).toFixed(1)},${y(v ? v[k] : 0).toFixed(1)}`);
      }
      return pts.join(" ");
    };
    svg.innerHTML =
      `<line class="grid-line" x1="0" x2="${W}" y1="${top}" y2="${top}"/>` +
      `<line class="grid-line" x1="0" x2="${W}" y1="${bottom}" y2="${bottom}"/>` +
      `<polyline class="done" points="${line(0)}"/><polyline class="failed" points="${line(1)}"/>`;
    let d = 0, f = 0;
    for (let t = Math.floor(serverNow) - 10; t < Math.floor(serverNow); t++) {
      const v = series.get(t);
      if (v) { d += v[0]; f += v[1]; }
    }
    const rd = $("[data-rate=done]"), rf = $("[data-rate=failed]");
    if (rd) rd.textContent = (d / 10).toFixed(1);
    if (rf) rf.textContent = (f / 10).toFixed(1);
  }

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
      `<span class="muted">${t.percent == null ? "" : `${Math.round(t.percent)}% · `}${span(t.running_for)}</span></div>`);
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
    serverNow = data.now;
    for (const r of data.series) series.set(Number(r.t), [Number(r.done), Number(r.failed)]);
    drawChart();
    updateCards(data.queues);
    updateWorkers(data.workers);
  }

  const initial = $("#overview-data");
  if (initial) {
    const data = JSON.parse(initial.textContent);
    serverNow = data.now;
    for (const r of data.series) series.set(Number(r.t), [Number(r.done), Number(r.failed)]);
    drawChart();
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
