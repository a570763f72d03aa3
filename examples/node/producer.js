#!/usr/bin/env node
// Submits tasks from Node.js: `node producer.js [task_type] [count] [params-json]`.
// Without params, task i gets {"a": i, "b": 2 * i} (what node.add and Python's "add" take).
// One submit_tasks call per 1,000 tasks: one round trip and one wake-up NOTIFY per batch.
// PGTASKS_TRACEPARENT (and PGTASKS_TRACESTATE), when set, are stored with every task
// (docs/observability.md).
// Prints the new ids as one JSON line: {"event": "submitted", "ids": [...]}.
'use strict';
const { Client } = require('pg');

const [type = 'node.add', count = '10', paramsJson] = process.argv.slice(2);
const queue = process.env.PGTASKS_QUEUE; // unset: the type's registered queue, else the default
// A W3C trace context (00-<trace id>-<span id>-<flags>): the tasks join that trace, and the
// Python worker's attempt spans are its children. One session setting, no SDK needed.
const traceparent = process.env.PGTASKS_TRACEPARENT;
// Its W3C tracestate (vendors' key=value entries), kept beside it.
const tracestate = process.env.PGTASKS_TRACESTATE;
const BATCH = 1000;

// Named arguments; queue is left out when unset so the database's policy decides.
const SUBMIT_MANY = `SELECT id FROM pgtasks.submit_tasks(task_type => $1, params_list => $2::jsonb[]
  ${queue ? ', queue => $3' : ''}) AS id`;
const SUBMIT_ONE = `SELECT pgtasks.submit_task(task_type => $1, params => $2::jsonb
  ${queue ? ', queue => $3' : ''}) AS id`;

async function main() {
  const client = new Client({ connectionString: process.env.DATABASE_URL });
  await client.connect();
  try {
    if (traceparent) {
      await client.query("SELECT set_config('pgtasks.traceparent', $1, false)", [traceparent]);
    }
    if (tracestate) {
      await client.query("SELECT set_config('pgtasks.tracestate', $1, false)", [tracestate]);
    }
    const n = Number(count);
    const params = (i) => paramsJson ?? JSON.stringify({ a: i, b: 2 * i });
    const ids = [];
    if (n === 1) {
      const { rows } = await client.query(SUBMIT_ONE, [type, params(0), ...(queue ? [queue] : [])]);
      ids.push(rows[0].id);
    }
    for (let first = 0; n > 1 && first < n; first += BATCH) {
      const list = Array.from({ length: Math.min(BATCH, n - first) }, (_, k) => params(first + k));
      const { rows } = await client.query(SUBMIT_MANY, [type, list, ...(queue ? [queue] : [])]);
      ids.push(...rows.map((r) => r.id));
    }
    console.log(JSON.stringify({ event: 'submitted', ids: ids.map(Number) }));
  } catch (e) {
    // A PT1xx SQLSTATE names the bad argument (docs/sql-api.md); nothing was inserted.
    console.error(`submit failed: ${e.code || ''} ${e.message}${e.hint ? ` (${e.hint})` : ''}`);
    process.exitCode = 1;
  } finally {
    await client.end();
  }
}

main();
