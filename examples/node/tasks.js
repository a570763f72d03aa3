// The task types the example worker runs. A handler gets (ctx, params) and returns the
// result (any JSON value). ctx: taskId, attempt, signal (aborted on cancel, lost lease,
// time limit or shutdown), softSignal and softDeadlinePassed() (aborted / true once the
// task's soft time limit passed: time to wind down), log(level, message), progress(current, total, message), and
// step(name, fn): fn's result is checkpointed, and a later attempt gets it without running fn;
// waitForEvent(name, timeoutSeconds): the event's payload (the attempt ends while it waits,
// holding nothing); sendEvent(taskId, name, payload): deliver one (admin role).
// Throw an error to fail the attempt; set error.permanent = true for no retry, or
// error.retryDelay = seconds for a retry after exactly that long.
'use strict';

const sleep = (ms, signal) => new Promise((resolve) => {
  const t = setTimeout(resolve, ms);
  signal?.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
});

module.exports = {
  'node.add': async (ctx, p) => ({ sum: p.a + p.b }),
  // n checkpointed steps of sleep_ms each: a resumed attempt skips the steps already done.
  'node.steps': async (ctx, p) => {
    let total = 0;
    for (let i = 0; i < p.n; i++) {
      total += await ctx.step(`step-${i}`, async () => {
        await sleep(p.sleep_ms || 0, ctx.signal);
        ctx.signal.throwIfAborted();
        ctx.log('INFO', `step ${i} ran in attempt ${ctx.attempt}`);
        return i;
      });
      ctx.progress(i + 1, p.n, `step ${i} of ${p.n}`);
    }
    return { steps: p.n, total };
  },
  // Waits for "approved" (sent from psql, Python or node.approve) and returns its payload.
  'node.approval': async (ctx, p) => ({
    payload: await ctx.waitForEvent('approved', p.timeout_s ?? 3600),
    attempt: ctx.attempt,
  }),
  'node.approve': async (ctx, p) => ({
    delivered: await ctx.sendEvent(p.task_id, 'approved', p.payload ?? null),
  }),
  // Works until the soft time limit passes (or `signal` stops it), then winds down and
  // says whether it was asked to; with wait false it returns at once.
  'node.soft': async (ctx, p) => {
    if (p.wait) {
      await new Promise((resolve) => {
        for (const s of [ctx.softSignal, ctx.signal]) {
          if (s.aborted) resolve();
          s.addEventListener('abort', resolve, { once: true });
        }
      });
    }
    return { soft_deadline_passed: ctx.softDeadlinePassed(), attempt: ctx.attempt };
  },
  'node.fail': async (ctx, p) => {
    const error = new Error(p.message || 'boom');
    throw Object.assign(error, { permanent: Boolean(p.permanent), retryDelay: p.retry_delay });
  },
};
