#!/usr/bin/env node
// A pgtasks worker in Node.js with plain `pg`, written from docs/worker-protocol.md alone.
// "(§n)" marks the checklist item of that document a piece of code implements.
// Settings come from the environment: DATABASE_URL, PGTASKS_QUEUES (comma-separated,
// default all), PGTASKS_CONCURRENCY (10), PGTASKS_LEASE (60 s), PGTASKS_POLL (1 s),
// PGTASKS_GRACE (5 s on SIGTERM), PGTASKS_WORKER_ID. Every event is a JSON line on stdout.
'use strict';
const os = require('os');
const crypto = require('crypto');
const { Client, Pool } = require('pg');

const env = process.env;
const URL = env.DATABASE_URL || 'postgresql://localhost/postgres';
const QUEUES = env.PGTASKS_QUEUES ? env.PGTASKS_QUEUES.split(',') : null; // null: every queue
const CONCURRENCY = Number(env.PGTASKS_CONCURRENCY || 10);
const LEASE = Number(env.PGTASKS_LEASE || 60); // seconds a claim lives without a heartbeat
const POLL = Number(env.PGTASKS_POLL || 1); // seconds: the backstop when a NOTIFY is missed
const GRACE = Number(env.PGTASKS_GRACE || 5); // seconds running tasks get on SIGTERM
const WORKER_ID = env.PGTASKS_WORKER_ID ||
  `node-${os.hostname()}-${process.pid}-${crypto.randomBytes(3).toString('hex')}`;

const REGISTRATION = [WORKER_ID, os.hostname(), process.pid, QUEUES, CONCURRENCY, LEASE];
const say = (event, fields = {}) => console.log(JSON.stringify({ event, ...fields }));
// Events name the attempt (a counter for people), never the lease token (the secret).
const tag = (run) => ({ task_id: run.id, attempt: run.attempt });
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// The task types this worker knows (tasks.js); it claims no others.
const HANDLERS = require('./tasks');
const TYPES = Object.keys(HANDLERS);

// Every statement this worker sends, with named arguments. Intervals travel as seconds.
const secs = (n) => `make_interval(secs => $${n})`;
const SQL = {
  registerWorker: `SELECT pgtasks.register_worker(worker_id => $1, host => $2, pid => $3,
    queues => $4::text[], concurrency => $5, lease => ${secs(6)})`,
  registerType: 'SELECT pgtasks.register_task_type(task_type => $1, worker_id => $2)',
  // soft_s: seconds after the claim when the soft limit passes, on the database's clock
  // (timeout - (deadline - soft_deadline)); NULL when the task has none (§3).
  claim: `SELECT c.*, extract(epoch FROM c.timeout)::float8 AS timeout_s,
      extract(epoch FROM c.timeout - (c.deadline - c.soft_deadline))::float8 AS soft_s
    FROM pgtasks.claim_tasks(worker_id => $1, queues => $2::text[], max_tasks => $3,
                             lease => ${secs(4)}, task_types => $5::text[]) c`,
  nextRunIn: `SELECT extract(epoch FROM pgtasks.next_run_at(queues => $1::text[],
    task_types => $2::text[]) - now())::float8 AS s`,
  heartbeat: `SELECT lost_task_id FROM pgtasks.heartbeat(worker_id => $1, task_ids => $2::bigint[],
    lease_tokens => $3::text[], lease => ${secs(4)})`,
  wakeupTags: `SELECT coalesce(array_agg(pgtasks.queue_tag(queue => q)), '{}') AS tags
    FROM unnest($1::text[]) q`,
  maintain: 'SELECT rescued, pruned FROM pgtasks.maintain()',
  limits: 'SELECT max_log_bytes FROM pgtasks.current_settings()',
  stepsOf: 'SELECT name, result FROM pgtasks.task_steps_of(task_id => $1, lease_token => $2)',
  checkpoint: `SELECT pgtasks.checkpoint(task_id => $1, lease_token => $2, step => $3,
    result => $4::jsonb)`,
  progress: `SELECT pgtasks.report_progress(task_id => $1, lease_token => $2, current => $3,
    total => $4, message => $5)`,
  logMany: `SELECT pgtasks.log_many(task_id => $1, lease_token => $2, levels => $3::text[],
    messages => $4::text[], ats => $5::timestamptz[])`,
  finishMany: `SELECT rejected_task_id FROM pgtasks.finish_tasks(task_ids => $1::bigint[],
    lease_tokens => $2::text[], results => $3::jsonb[])`,
  finishOne: 'SELECT pgtasks.finish_task(task_id => $1, lease_token => $2, result => $3::jsonb)',
  fail: `SELECT pgtasks.fail_task(task_id => $1, lease_token => $2, error => $3, traceback => $4,
    retryable => $5, retry_delay => ${secs(6)}) AS status`,
  yield: 'SELECT pgtasks.yield_task(task_id => $1, lease_token => $2)',
  waitForEvent: `SELECT state, payload FROM pgtasks.wait_for_event(task_id => $1,
    lease_token => $2, name => $3, timeout => ${secs(4)})`,
  sendEvent: `SELECT pgtasks.send_event(task_id => $1, name => $2, payload => $3::jsonb)
    AS delivered`,
  unregister: 'SELECT pgtasks.unregister_worker(worker_id => $1)',
};

// (§11) What a refused call means. PT002/PT003: the task is someone else's now (rescued,
// cancelled, re-claimed) or gone: drop it silently. Transient errors: leases cover the gap.
const isGone = (e) => e && (e.code === 'PT002' || e.code === 'PT003');
// Connection trouble: Node's own codes (ECONNRESET...), SQLSTATE classes 08, 57P, 40, or
// 55P03: another session held the task's row past the function's lock_timeout (§2).
const isTransient = (e) => !/^[0-9A-Z]{5}$/.test(e?.code) || /^(08|57P|40|55P03)/.test(e.code);

// Tasks and heartbeats/maintenance on separate pools, so busy tasks cannot starve leases.
const pool = new Pool({ connectionString: URL, max: CONCURRENCY + 2 });
const keeper = new Pool({ connectionString: URL, max: 2 });
for (const p of [pool, keeper]) p.on('error', (e) => say('warning', { error: e.message }));

const running = new Map(); // task id (bigint as string) -> run
let stopping = false;
let wake = null;
const kick = () => { if (wake) { wake(); wake = null; } };
const idle = (ms) => new Promise((resolve) => {
  const t = setTimeout(() => { wake = null; resolve(); }, ms);
  wake = () => { clearTimeout(t); resolve(); };
});

// Stops a task's handler: why decides what happens to the task afterwards (see execute).
function stop(run, why, error) {
  if (run.why) return;
  run.why = why;
  run.error = error;
  run.ctl.abort(new Error(why));
}

// (§7) Logs and progress are buffered and written at most once a second per task, and
// before every checkpoint, result, error or hand-back (they are fenced like every write).
function scheduleFlush(run) {
  if (run.flushTimer) return;
  const due = Math.max(0, run.flushedAt + 1000 - Date.now());
  const failed = (e) => stop(run, isGone(e) ? 'lease lost' : 'write failed', e);
  run.flushTimer = setTimeout(() => flush(run).catch(failed), due);
}
// PT204: a line over settings.max_log_bytes. Read the limit (it can change at any time) and
// cut the long lines to fit, with a note of their size: a log line never fails a task.
async function clipper() {
  const { rows: [{ max_log_bytes: max }] } = await pool.query(SQL.limits);
  return (m) => {
    const size = m == null ? 0 : Buffer.byteLength(m);
    if (size <= max) return m;
    let note = ` [cut: ${size} bytes]`;
    if (note.length > max) note = '';
    // A character cut in half decodes as U+FFFD (3 bytes): drop it.
    const kept = Buffer.from(m).subarray(0, max - note.length).toString().replace(/\uFFFD$/, '');
    return kept + note;
  };
}
const retryClipped = (send, e) => (e.code === 'PT204' ? clipper().then(send) : Promise.reject(e));
function flush(run) {
  clearTimeout(run.flushTimer);
  run.flushTimer = null;
  run.flushedAt = Date.now();
  const logs = run.logs.splice(0);
  const progress = run.progress;
  run.progress = null;
  const sendLogs = (clip = (m) => m) => pool.query(SQL.logMany, [run.id, run.token,
    logs.map((l) => l[0]), logs.map((l) => clip(l[1])), logs.map((l) => l[2])]);
  const sendProgress = (clip = (m) => m) => pool.query(SQL.progress,
    [run.id, run.token, progress[0], progress[1], clip(progress[2])]);
  const write = async () => {
    if (logs.length) await sendLogs().catch((e) => retryClipped(sendLogs, e));
    if (progress) await sendProgress().catch((e) => retryClipped(sendProgress, e));
  };
  // One write at a time per task, so log lines keep their order.
  const written = run.writes.then(write);
  run.writes = written.catch(() => {});
  return written;
}

// (§10) wait_for_event answered 'waiting': the database parked the task (COMMIT, no retry
// spent, token spent). The attempt is over and nothing more is written for it; the event
// or the timeout makes it claimable again, and the same wait then answers.
class Parked extends Error {}

function context(run, steps) {
  return {
    taskId: run.id,
    attempt: run.attempt,
    signal: run.ctl.signal,
    // (§3) Aborted once, when the soft time limit passes (never without one): the handler
    // may wind down and return or throw before the hard limit aborts `signal`.
    softSignal: run.soft.signal,
    softDeadlinePassed: () => run.soft.signal.aborted,
    log(level, message) {
      run.logs.push([level, String(message), new Date()]);
      scheduleFlush(run);
    },
    progress(current, total = null, message = null) {
      run.progress = [current, total, message];
      scheduleFlush(run);
    },
    // (§5) A step done by an earlier attempt returns its stored result without running.
    async step(name, fn) {
      if (steps.has(name)) return steps.get(name);
      const result = await fn();
      await flush(run);
      await pool.query(SQL.checkpoint, [run.id, run.token, name, JSON.stringify(result ?? null)]);
      steps.set(name, result ?? null);
      return result;
    },
    // The event's payload; throws Parked (the attempt ends here) while it has not come, and
    // a permanent EVENT_TIMEOUT error once the first wait's timeout passed without it.
    async waitForEvent(name, timeoutSeconds = null) {
      await flush(run);
      const { rows } = await pool.query(SQL.waitForEvent, [run.id, run.token, name, timeoutSeconds]);
      const { state, payload } = rows[0];
      if (state === 'received') return payload;
      if (state === 'timeout') {
        throw Object.assign(new Error(`event ${name} did not arrive in time`),
          { code: 'EVENT_TIMEOUT', permanent: true });
      }
      throw new Parked(name);
    },
    // Deliver an event to another task (needs pgtasks_admin); false if already delivered.
    async sendEvent(taskId, name, payload = null) {
      const { rows } = await pool.query(SQL.sendEvent, [taskId, name, JSON.stringify(payload)]);
      return rows[0].delivered;
    },
  };
}

// (§9) Results go out in batches: one finish_tasks per ~20 ms or 100 results.
let done = [];
let doneTimer = null;
function complete(run, result) {
  return new Promise((resolve) => {
    done.push({ run, json: JSON.stringify(result ?? null), resolve });
    if (done.length >= 100) finishBatch(); else doneTimer ??= setTimeout(finishBatch, 20);
  });
}
async function finishBatch() {
  clearTimeout(doneTimer);
  doneTimer = null;
  const batch = done;
  done = [];
  if (!batch.length) return;
  try {
    const { rows } = await pool.query(SQL.finishMany,
      [batch.map((b) => b.run.id), batch.map((b) => b.run.token), batch.map((b) => b.json)]);
    const rejected = new Set(rows.map((r) => r.rejected_task_id));
    for (const b of batch) {
      // Rejected: the lease was lost, or the result was too large and the task FAILED.
      if (rejected.has(b.run.id)) say('dropped', { ...tag(b.run), why: 'result rejected' });
      else say('finished', tag(b.run));
      b.resolve();
    }
  } catch (e) {
    if (isTransient(e)) {
      // The database is away, or a row was locked past lock_timeout: nothing was written.
      // Keep the batch (its tasks stay running, so heartbeats keep their leases) and retry.
      done.unshift(...batch);
      doneTimer ??= setTimeout(finishBatch, 1000);
      return;
    }
    // One result the database refuses (over the size limit, a \u0000 jsonb cannot hold)
    // must not sink the others: one at a time, and fail the one that cannot be stored.
    for (const b of batch) {
      await pool.query(SQL.finishOne, [b.run.id, b.run.token, b.json]).then(
        () => say('finished', tag(b.run)),
        (err) => (isGone(err) || isTransient(err) ? report(b.run, err)
          : fail(b.run, new Error(`result could not be stored: ${err.message}`), false)));
      b.resolve();
    }
  }
}

// (§10) A failure uses a retry (with the row's backoff, or the task's own retry_delay)
// unless it is permanent: the task says so, or the database refused what it wrote (a PT
// code: too large, out of bounds), which another attempt would write again.
async function fail(run, err, retryable = !(err.permanent || /^PT/.test(err.code))) {
  const error = String(err.message || err);
  const call = (delay) => pool.query(SQL.fail,
    [run.id, run.token, error, err.stack || null, retryable, delay]);
  try {
    // PT119: the task asked for an absurd retry_delay; nothing was written, so use the backoff.
    const { rows } = await call(err.retryDelay ?? null)
      .catch((e) => (e.code === 'PT119' ? call(null) : Promise.reject(e)));
    say('failed', { ...tag(run), status: rows[0].status, error });
  } catch (e) { report(run, e); }
}
function report(run, e) {
  say(isGone(e) ? 'dropped' : 'warning', { ...tag(run), why: e.message, code: e.code });
}

async function execute(run, row) {
  try {
    const steps = new Map();
    if (row.has_steps) {
      const { rows } = await pool.query(SQL.stepsOf, [run.id, run.token]);
      for (const s of rows) steps.set(s.name, s.result);
    }
    const result = await HANDLERS[row.task_type](context(run, steps), row.params);
    await flush(run);
    await complete(run, result);
  } catch (err) {
    if (err instanceof Parked) return say('parked', { ...tag(run), waits_for: err.message });
    const why = run.why || (isGone(err) ? 'lease lost' : null);
    if (why === 'cancelled' || why === 'lease lost') return say('dropped', { ...tag(run), why });
    await flush(run).catch(() => {});
    if (why === 'shutdown') {
      // (§10) Hand-back: COMMIT without using a retry; the next claim resumes from the steps.
      await pool.query(SQL.yield, [run.id, run.token])
        .then(() => say('yielded', tag(run)), (e) => report(run, e));
    } else {
      const timedOut = new Error(`timed out after ${row.timeout_s} s`);
      await fail(run, why === 'timed out' ? timedOut : (run.error || err));
    }
  }
}

function start(row) {
  const run = {
    id: row.id, attempt: row.attempt, token: row.lease_token, ctl: new AbortController(),
    soft: new AbortController(),
    why: null, error: null,
    logs: [], progress: null, flushTimer: null, flushedAt: 0, writes: Promise.resolve(),
  };
  running.set(run.id, run);
  // Past 2^31 ms a Node timer fires at once; the database's deadline still holds there.
  const ms = row.timeout_s * 1000;
  const limit = ms < 2 ** 31 ? setTimeout(() => stop(run, 'timed out'), ms) : null;
  const softMs = row.soft_s === null ? null : Math.max(0, row.soft_s * 1000);
  const soft = softMs !== null && softMs < 2 ** 31 ? setTimeout(() => {
    say('soft_deadline', tag(run));
    run.soft.abort(new Error(`soft time limit of ${row.soft_s} s exceeded`));
  }, softMs) : null;
  execute(run, row).finally(() => {
    clearTimeout(limit);
    clearTimeout(soft);
    clearTimeout(run.flushTimer);
    running.delete(run.id);
    kick(); // a slot is free
  });
}

// (§3) Claim in batches of the free slots; when nothing is ready, sleep until the next
// task's run_at, a NOTIFY or a free slot, but never longer than the poll interval.
async function claimLoop() {
  while (!stopping) {
    const free = CONCURRENCY - running.size;
    let wait = POLL;
    if (free > 0) {
      try {
        const { rows } = await pool.query(SQL.claim, [WORKER_ID, QUEUES, free, LEASE, TYPES]);
        rows.forEach(start);
        if (rows.length === free) continue;
        const { rows: [next] } = await pool.query(SQL.nextRunIn, [QUEUES, TYPES]);
        // Ready but skipped (locked by another worker's claim): look again a little later.
        if (next.s !== null) wait = Math.min(Math.max(next.s, 0.05), POLL);
      } catch (e) { say('warning', { error: `claim failed: ${e.message}` }); }
    }
    await idle(wait * 1000);
  }
}

// (§8) LISTEN on a connection of its own, reconnecting; a notice is only a hint.
async function listen() {
  while (!stopping) {
    const c = new Client({ connectionString: URL });
    const ended = new Promise((resolve) => { c.on('error', resolve); c.on('end', resolve); });
    c.on('notification', onNotice);
    try {
      await c.connect();
      await c.query('LISTEN pgtasks_wakeup; LISTEN pgtasks_cancel');
      listener = c;
      say('listening');
      kick(); // notices sent while we were not listening are lost: claim now
      await ended;
    } catch (e) { say('warning', { error: `LISTEN: ${e.message}` }); }
    listener = null;
    c.end().catch(() => {});
    if (!stopping) await sleep(1000);
  }
}
let listener = null;

// (§8) Notices are hints from anyone (any role may NOTIFY): a wake-up only makes us claim,
// and a cancel only makes us ask the database, with one heartbeat of our tokens, which of
// our tasks we no longer hold; those stop, the others run on.
let TAGS = null; // the wake-up tags of QUEUES (null: every queue wakes us)
const hinted = new Set(); // task ids named by cancel notices, waiting for a heartbeat
let confirming = false;
let again = false;

function onNotice({ channel, payload }) {
  if (channel === 'pgtasks_wakeup') {
    if (!TAGS || payload === '' || TAGS.has(payload)) kick();
    return;
  }
  // pgtasks_cancel: a task id. Anything else, or a task we do not run, concerns nobody here.
  if (!/^[0-9]+$/.test(payload) || !running.has(payload)) {
    say('cancel_notice', { payload, cancelled: false });
    return;
  }
  hinted.add(payload);
  confirm().catch((e) => say('warning', { error: `cancel check: ${e.message}` }));
}

// One heartbeat at a time; notices that arrive meanwhile are answered by one more, at most
// one per 200 ms however many come (a flood of forged notices costs the database little).
async function confirm() {
  if (confirming) { again = true; return; }
  confirming = true;
  try {
    do {
      again = false;
      const asked = [...hinted];
      hinted.clear();
      const lost = await beat(new Set(asked));
      for (const id of asked) {
        say('cancel_notice', { task_id: id, payload: id, cancelled: lost.has(id) });
      }
      if (again) await sleep(200);
    } while (again);
  } finally { confirming = false; }
}

// (§4, §6) Timers, jittered +-20 % so a fleet started together does not call in step.
const loops = [];
function every(seconds, fn) {
  const loop = { timer: null };
  const tick = async () => {
    try { await fn(); } catch (e) { say('warning', { error: e.message }); }
    if (!loop.off) loop.timer = setTimeout(tick, seconds * 1000 * (0.8 + 0.4 * Math.random()));
  };
  loop.timer = setTimeout(tick, seconds * 1000 * (0.8 + 0.4 * Math.random()));
  loops.push(loop);
}

let cutOff = false;
// (§4) One heartbeat for every running task: extends their leases and stops the ones the
// database says we lost ('cancelled' when a cancel notice named them).
async function beat(cancelNotices = new Set()) {
  const runs = [...running.values()];
  const { rows } = await keeper.query(SQL.heartbeat,
    [WORKER_ID, runs.map((r) => r.id), runs.map((r) => r.token), LEASE]);
  const lost = new Set(rows.map((r) => r.lost_task_id));
  for (const id of lost) {
    if (running.has(id)) stop(running.get(id), cancelNotices.has(id) ? 'cancelled' : 'lease lost');
  }
  return lost;
}
async function heartbeat() { // also while idle: it keeps workers.last_seen fresh
  try {
    // Back after an outage: rescue may have swept our row from the registry (§1).
    if (cutOff) await keeper.query(SQL.registerWorker, REGISTRATION);
    await beat();
    cutOff = false;
  } catch (e) { cutOff = true; throw e; }
}

async function maintain() { // rescue expired leases and prune: no Python process needed
  const { rows: [m] } = await keeper.query(SQL.maintain);
  if (m.rescued) { say('rescued', { count: m.rescued }); kick(); }
}

async function shutdown(signal) {
  if (stopping) return;
  stopping = true;
  kick();
  say('stopping', { signal, running: running.size });
  for (let t = 0; running.size && t < GRACE * 1000; t += 50) await sleep(50);
  for (const run of running.values()) stop(run, 'shutdown');
  for (let t = 0; running.size && t < 5000; t += 20) await sleep(20);
  await finishBatch();
  for (const loop of loops) { loop.off = true; clearTimeout(loop.timer); }
  await listener?.end().catch(() => {});
  await pool.query(SQL.unregister, [WORKER_ID]).catch(() => {});
  await Promise.all([pool.end(), keeper.end()]);
  say('stopped');
  process.exit(0);
}

async function main() {
  // (§1) Register the worker and the types it runs before claiming anything.
  await pool.query(SQL.registerWorker, REGISTRATION);
  for (const t of TYPES) await pool.query(SQL.registerType, [t, WORKER_ID]);
  // (§8) Wake-ups name a queue by its tag: learn ours once (the tags never change).
  if (QUEUES) TAGS = new Set((await pool.query(SQL.wakeupTags, [QUEUES])).rows[0].tags);
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
  listen();
  every(LEASE / 3, heartbeat);
  every(Math.min(LEASE / 2, 30), maintain);
  say('ready', { worker_id: WORKER_ID, types: TYPES, lease: LEASE });
  await claimLoop();
}

main().catch((e) => { say('fatal', { error: e.message }); process.exit(1); });
