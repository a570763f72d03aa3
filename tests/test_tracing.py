"""OpenTelemetry trace context across the queue (pgtasks.tracing, docs/observability.md).

The submit stores the W3C traceparent of the current span (or of submit_task's argument, or
of the session setting pgtasks.traceparent) and each attempt runs in a CONSUMER span whose
parent is that context. Spans are read back from the SDK's own exporters: the in-memory
one for workers in this process, the console one (JSON lines in a file) for a worker
process. The provider is the process's global one, set once by this module.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    TraceState,
)

from pgtasks import Client, Registry, SyncClient, Worker, chain, group, task_node, task_register
from pgtasks.context import TaskContext
from tests.conftest import ROOT, wait_for

EXPORTER = InMemorySpanExporter()


def _provider() -> None:
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
        trace.set_tracer_provider(provider)


@pytest.fixture
def spans() -> InMemorySpanExporter:
    _provider()
    EXPORTER.clear()
    return EXPORTER


REG = Registry()


@task_register("traced", into=REG, max_retries=1, backoff_base=0.05)
async def traced(ctx: TaskContext, params: dict[str, Any]) -> str:
    await ctx.step("fetch", lambda: "fetched")
    if ctx.attempt == 1 and params.get("fail_first"):
        raise RuntimeError("first attempt fails")
    return "ok"


@task_register("waits", into=REG)
async def waits(ctx: TaskContext, params: dict[str, Any]) -> Any:
    if ctx.attempt == 1:
        await ctx.snooze(0)
    await ctx.sleep(0, name="nap")
    return await ctx.wait_for_event("go", timeout=60)


@task_register("awaits", into=REG)
async def awaits(ctx: TaskContext, params: dict[str, Any]) -> Any:
    return await ctx.wait_for_event("go", timeout=60)


@task_register("spawner", into=REG)
async def spawner(ctx: TaskContext, params: dict[str, Any]) -> int:
    async with Client(params["dsn"]) as client:
        return int(await client.submit("traced", {}))


@task_register("fans", into=REG)
async def fans(ctx: TaskContext, params: dict[str, Any]) -> int:
    (kid,) = await ctx.spawn([task_node("traced")])
    await ctx.wait_for_children()
    return kid


def traceparent_of(span: Any) -> str:
    sc = span.get_span_context()
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"


async def run_until_done(dsn: str, conn: asyncpg.Connection, task_id: int) -> None:
    w = Worker(dsn, registry=REG, poll_interval=0.1)
    run = asyncio.create_task(w.run())
    try:
        await wait_for(conn, "SELECT status = 'DONE' FROM pgtasks.tasks WHERE id = $1", task_id)
    finally:
        w.stop()
        await asyncio.wait_for(run, 30)


def attempt_spans(exporter: InMemorySpanExporter, task_id: int) -> list[ReadableSpan]:
    found = [
        s
        for s in exporter.get_finished_spans()
        if (s.attributes or {}).get("messaging.message.id") == str(task_id)
    ]
    return sorted(found, key=lambda s: (s.attributes or {})["pgtasks.task.attempt"])


# -- SQL: the argument, the session setting, the check --------------------------------------

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TP2 = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"


async def test_submit_task_stores_its_traceparent_argument_and_claims_return_it(conn):
    tid = await conn.fetchval("SELECT pgtasks.submit_task('t', traceparent => $1)", TP)
    plain = await conn.fetchval("SELECT pgtasks.submit_task('t')")
    rows = await conn.fetch("SELECT * FROM pgtasks.claim_tasks('w1', max_tasks => 2)")
    assert {r["id"]: r["traceparent"] for r in rows} == {tid: TP, plain: None}


async def test_the_session_setting_is_the_default_of_every_submit_path(conn):
    await conn.execute(f"SET pgtasks.traceparent = '{TP}'")
    one = await conn.fetchval("SELECT pgtasks.submit_task('t')")
    keyed = await conn.fetchval("SELECT pgtasks.submit_task('t', unique_key => 'k')")
    child = await conn.fetchval(
        "SELECT pgtasks.submit_task('t', depends_on => ARRAY[$1::bigint])", one
    )
    got_or_made = await conn.fetchval(
        "SELECT id FROM pgtasks.submit_or_get('t', unique_key => 'g')"
    )
    flow = await conn.fetchval(
        """SELECT pgtasks.submit_workflow('{"nodes": [{"name": "a", "type": "t"},
             {"name": "b", "type": "t", "after": ["a"]}]}')::text"""
    )
    nodes = list(json.loads(flow)["nodes"].values())
    bulk = await conn.fetchval(
        "SELECT array_agg(s) FROM pgtasks.submit_tasks('t', ARRAY['{}'::jsonb, '{}']) s"
    )
    # The argument wins for its call, and the session's setting is back after it.
    other = await conn.fetchval("SELECT pgtasks.submit_task('t', traceparent => $1)", TP2)
    assert await conn.fetchval("SELECT current_setting('pgtasks.traceparent')") == TP
    await conn.execute("RESET pgtasks.traceparent")
    after = await conn.fetchval("SELECT pgtasks.submit_task('t')")
    got = dict(await conn.fetch("SELECT id, traceparent FROM pgtasks.tasks"))
    assert [got[i] for i in (one, keyed, child, got_or_made, *nodes, *bulk)] == [TP] * 8
    assert (got[other], got[after]) == (TP2, None)


async def test_the_argument_inside_a_transaction_leaves_its_local_setting_as_it_was(conn):
    async with conn.transaction():
        await conn.execute(f"SET LOCAL pgtasks.traceparent = '{TP}'")
        await conn.fetchval("SELECT pgtasks.submit_task('t', traceparent => $1)", TP2)
        assert await conn.fetchval("SELECT current_setting('pgtasks.traceparent')") == TP
    assert await conn.fetchval("SELECT current_setting('pgtasks.traceparent', true)") in (None, "")


async def test_every_submit_function_takes_the_argument_for_its_call_only(conn):
    await conn.execute(f"SET pgtasks.traceparent = '{TP}'")
    keyed = await conn.fetchval(
        "SELECT id FROM pgtasks.submit_or_get('t', unique_key => 'k', traceparent => $1)", TP2
    )
    bulk = await conn.fetchval(
        """SELECT array_agg(s) FROM pgtasks.submit_tasks('t', ARRAY['{}'::jsonb, '{}'],
                                                          traceparent => $1) s""",
        TP2,
    )
    keyed_bulk = await conn.fetchval(
        """SELECT array_agg(s) FROM pgtasks.submit_tasks('t', ARRAY['{}'::jsonb],
                                   unique_keys => ARRAY['u'], traceparent => $1) s""",
        TP2,
    )
    flow = await conn.fetchval(
        """SELECT pgtasks.submit_workflow('{"nodes": [{"name": "a", "type": "t"},
             {"name": "b", "type": "t", "after": ["a"]}]}', traceparent => $1)::text""",
        TP2,
    )
    assert await conn.fetchval("SELECT current_setting('pgtasks.traceparent')") == TP
    after = await conn.fetchval("SELECT pgtasks.submit_task('t')")
    nodes = list(json.loads(flow)["nodes"].values())
    got = dict(await conn.fetch("SELECT id, traceparent FROM pgtasks.tasks"))
    assert [got[i] for i in (keyed, *bulk, *keyed_bulk, *nodes)] == [TP2] * 6
    assert got[after] == TP
    for call in (
        "SELECT pgtasks.submit_or_get('t', traceparent => 'bad')",
        "SELECT pgtasks.submit_tasks('t', ARRAY['{}'::jsonb], traceparent => 'bad')",
        'SELECT pgtasks.submit_workflow(\'{"nodes": [{"name": "a", "type": "t"}]}\','
        " traceparent => 'bad')",
    ):
        with pytest.raises(asyncpg.PostgresError) as err:
            await conn.fetchval(call)
        assert err.value.sqlstate == "PT131"


@pytest.mark.parametrize(
    "bad",
    [
        "garbage",
        TP.upper(),  # the spec's hex is lower case
        TP + "-extra",  # version 00 has exactly four fields
        "ff" + TP[2:],  # ff is the spec's invalid version; no other version is known
        "00-" + "0" * 32 + "-b7ad6b7169203331-01",  # all-zero trace id
        "00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01",  # all-zero span id
        "x" * 10_000,
    ],
)
async def test_a_malformed_traceparent_is_refused_with_a_hint(conn, bad):
    with pytest.raises(asyncpg.PostgresError) as err:
        await conn.fetchval("SELECT pgtasks.submit_task('t', traceparent => $1)", bad)
    assert err.value.sqlstate == "PT131"
    assert "55 characters" in (err.value.hint or "")
    assert len(err.value.message) < 200  # a huge value is not echoed whole
    await conn.execute("SELECT set_config('pgtasks.traceparent', $1, false)", bad)
    with pytest.raises(asyncpg.PostgresError) as err:
        await conn.fetchval("SELECT pgtasks.submit_task('t')")
    assert err.value.sqlstate == "PT131"
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.tasks") == 0


# -- SQL: tracestate, beside traceparent ------------------------------------------------------

TS = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"


async def test_tracestate_travels_with_its_traceparent_to_the_claim(conn):
    one = await conn.fetchval(
        "SELECT pgtasks.submit_task('t', traceparent => $1, tracestate => $2)", TP, TS
    )
    # Optional whitespace, empty members and tenant@system keys are the spec's own forms.
    odd = " a=1 ,, t0@sys=v/x"
    two = await conn.fetchval(
        "SELECT pgtasks.submit_task('t', traceparent => $1, tracestate => $2)", TP2, odd
    )
    rows = await conn.fetch("SELECT * FROM pgtasks.claim_tasks('w1', max_tasks => 1)")
    assert [(r["id"], r["traceparent"], r["tracestate"]) for r in rows] == [(one, TP, TS)]
    token = rows[0]["lease_token"]
    rows = await conn.fetch(
        """SELECT * FROM pgtasks.finish_and_claim('w1', ARRAY[$1::bigint], ARRAY[$2],
                                                  ARRAY['1'::jsonb], claim_max => 1)""",
        one,
        token,
    )
    assert [(r["id"], r["tracestate"]) for r in rows] == [(two, odd)]


async def test_the_session_tracestate_goes_with_the_session_traceparent_only(conn):
    await conn.execute(f"SET pgtasks.traceparent = '{TP}'")
    await conn.execute(f"SET pgtasks.tracestate = '{TS}'")
    one = await conn.fetchval("SELECT pgtasks.submit_task('t')")
    keyed = await conn.fetchval("SELECT id FROM pgtasks.submit_or_get('t', unique_key => 'g')")
    bulk = await conn.fetchval(
        "SELECT array_agg(s) FROM pgtasks.submit_tasks('t', ARRAY['{}'::jsonb, '{}']) s"
    )
    flow = await conn.fetchval(
        """SELECT pgtasks.submit_workflow('{"nodes": [{"name": "a", "type": "t"}]}')::text"""
    )
    nodes = list(json.loads(flow)["nodes"].values())
    # A traceparent argument brings its own tracestate (here none), never the session's.
    own = await conn.fetchval("SELECT pgtasks.submit_task('t', traceparent => $1)", TP2)
    mine = await conn.fetchval(
        "SELECT pgtasks.submit_workflow($1::text::jsonb, traceparent => $2,"
        " tracestate => 'k=v')::text",
        '{"nodes": [{"name": "a", "type": "t"}]}',
        TP2,
    )
    assert await conn.fetchval("SELECT current_setting('pgtasks.tracestate')") == TS
    # The spec discards a tracestate without a traceparent.
    await conn.execute("RESET pgtasks.traceparent")
    alone = await conn.fetchval("SELECT pgtasks.submit_task('t')")
    got = {r["id"]: (r["traceparent"], r["tracestate"]) for r in await conn.fetch(
        "SELECT id, traceparent, tracestate FROM pgtasks.tasks")}  # fmt: skip
    assert [got[i] for i in (one, keyed, *bulk, *nodes)] == [(TP, TS)] * 5
    assert got[own] == (TP2, None)
    assert got[json.loads(mine)["nodes"]["a"]] == (TP2, "k=v")
    assert got[alone] == (None, None)


# One list each, tried in one test (a test's database costs more than its checks).
BAD_TRACESTATES = [
    "a=" + "x" * 511,  # over the 512 characters every vendor passes on
    "Rojo=1",  # keys are lower case
    "a=1,a=2",  # keys are unique
    ",".join(f"k{i}=v" for i in range(33)),  # at most 32 members
    "a=caf\u00e9",  # values are printable ASCII
    "a=b=c",  # a value holds no '='
    "a=",  # a value has at least one character
    "a=1\nb=2",
    "=1",
    "a=1, b=2,\ta=3",  # a repeated key, whatever the spaces around it
    "a=1 b=2",  # members are separated by commas
    "1a=1",  # a simple key starts with a letter
    "t@Sys=1",  # a system id is lower case
    "a=" + "v" * 257,  # a value has at most 256 characters
    "t@" + "s" * 15 + "=1",  # a system id has at most 14
    "t" * 242 + "@s=1",  # a tenant id at most 241
]
GOOD_TRACESTATES = [
    "a=1",
    "a=1,\tb=2 , c=v w",  # spaces or tabs around members; a value may hold a space
    ",".join(f"k{i}=v" for i in range(32)),  # 32 members
    "a=1,,b=2,",  # empty members
    "t0@sys-1=x,ab=1,b=2",  # tenant@system keys; b is not a repeat of ab
    "k=" + "v" * 256,
    "k=a@bbbbbbbbbbbbbbbbbbbb,t@" + "s" * 14 + "=1",  # an @ in a value is no key's
    "t" * 241 + "@s=1",
]


async def test_a_malformed_tracestate_is_refused_with_a_hint(conn):
    await conn.execute(f"SET pgtasks.traceparent = '{TP}'")
    for bad in BAD_TRACESTATES:
        for call in (
            "SELECT pgtasks.submit_task('t', traceparent => $2, tracestate => $1)",
            "SELECT pgtasks.submit_tasks('t', ARRAY['{}'::jsonb], traceparent => $2,"
            " tracestate => $1)",
            "SELECT pgtasks.submit_or_get('t', traceparent => $2, tracestate => $1)",
            # The session setting, checked by the column default.
            "SELECT pgtasks.submit_task('t') FROM set_config('pgtasks.tracestate', $1, false),"
            " pg_catalog.length($2)",
        ):
            with pytest.raises(asyncpg.PostgresError) as err:
                await conn.fetchval(call, bad, TP)
            assert (err.value.sqlstate, bad) == ("PT132", bad)
            assert "512 characters" in (err.value.hint or "")
        # OpenTelemetry's parser drops it whole too (it has no bound of 512 characters).
        if len(bad) <= 512:
            assert TraceState.from_header([bad]) == TraceState(), bad
    # A tracestate goes with its traceparent.
    with pytest.raises(asyncpg.PostgresError) as err:
        await conn.fetchval("SELECT pgtasks.submit_task('t', tracestate => $1)", TS)
    assert err.value.sqlstate == "PT132"
    assert "traceparent" in (err.value.hint or "")
    assert await conn.fetchval("SELECT count(*) FROM pgtasks.tasks") == 0


async def test_a_tracestate_of_the_specs_forms_is_kept_as_given(conn):
    for good in GOOD_TRACESTATES:
        tid = await conn.fetchval(
            "SELECT pgtasks.submit_task('t', traceparent => $1, tracestate => $2)", TP, good
        )
        got = await conn.fetchval("SELECT tracestate FROM pgtasks.tasks WHERE id = $1", tid)
        assert got == good
        # Every member survives OpenTelemetry's parser, as the worker reads it.
        members = [m for m in good.split(",") if m.strip(" \t")]
        assert len(TraceState.from_header([good])) == len(members), good


async def test_the_table_bounds_a_tracestate_whatever_writes_it(conn):
    tid = await conn.fetchval(
        "SELECT pgtasks.submit_task('t', traceparent => $1, tracestate => $2)", TP, TS
    )
    # The owner's hand-written UPDATE meets the CHECK, which answers with the same error.
    with pytest.raises(asyncpg.PostgresError) as err:
        await conn.execute(
            "UPDATE pgtasks.tasks SET tracestate = repeat('a', 600) WHERE id = $1", tid
        )
    assert err.value.sqlstate == "PT132"
    with pytest.raises(asyncpg.PostgresError) as err:
        await conn.execute("UPDATE pgtasks.tasks SET tracestate = E'a=\\x01' WHERE id = $1", tid)
    assert err.value.sqlstate == "PT132"


# -- Python: submit inside a span, attempts in spans ---------------------------------------


async def test_a_request_span_is_the_parent_of_the_attempt_span(dsn, conn, spans):
    tracer = trace.get_tracer("tests")
    async with Client(dsn) as client:
        with tracer.start_as_current_span("request") as request:
            tid = await client.submit("traced", {})
        untraced = await client.submit("traced", {})
    stored = dict(await conn.fetch("SELECT id, traceparent FROM pgtasks.tasks"))
    assert stored == {tid: traceparent_of(request), untraced: None}
    await run_until_done(dsn, conn, tid)
    await wait_for(conn, "SELECT status = 'DONE' FROM pgtasks.tasks WHERE id = $1", untraced)
    (span,) = attempt_spans(spans, tid)
    req = request.get_span_context()
    assert span.context.trace_id == req.trace_id
    assert span.parent is not None and span.parent.span_id == req.span_id
    assert [link.context.span_id for link in span.links] == [req.span_id]
    assert span.kind is SpanKind.CONSUMER
    assert span.name == "process default" or span.name.startswith("process ")
    attrs = dict(span.attributes or {})
    assert attrs["messaging.system"] == "pgtasks"
    assert attrs["messaging.destination.name"] == await conn.fetchval(
        "SELECT queue FROM pgtasks.tasks WHERE id = $1", tid
    )
    assert (attrs["pgtasks.task.type"], attrs["pgtasks.task.attempt"]) == ("traced", 1)
    assert attrs["pgtasks.outcome"] == "succeeded"
    assert [e.name for e in span.events] == ["pgtasks.step"]
    # The task without a trace context gets a span of its own trace (a root).
    (root,) = attempt_spans(spans, untraced)
    assert root.parent is None and root.context.trace_id != req.trace_id


async def test_a_retried_task_gives_two_attempt_spans_linked_to_the_submit(dsn, conn, spans):
    tracer = trace.get_tracer("tests")
    async with Client(dsn) as client:
        with tracer.start_as_current_span("request") as request:
            tid = await client.submit("traced", {"fail_first": True})
    await run_until_done(dsn, conn, tid)
    first, second = attempt_spans(spans, tid)
    req = request.get_span_context()
    for s in (first, second):
        assert s.context.trace_id == req.trace_id
        assert s.parent is not None and s.parent.span_id == req.span_id
        assert [link.context.span_id for link in s.links] == [req.span_id]
    assert first.status.status_code is StatusCode.ERROR
    assert "first attempt fails" in (first.status.description or "")
    assert [e.name for e in first.events] == ["pgtasks.step", "exception"]
    assert second.status.status_code is StatusCode.UNSET
    # The retry found the step's checkpoint and did not run it again.
    assert second.events[0].attributes == {
        "pgtasks.step.name": "fetch",
        "pgtasks.step.resumed": True,
    }


def request_with_tracestate() -> Any:
    """The context of a request that came in with a tracestate (a remote parent's entries):
    the SDK's spans inherit their parent's tracestate."""
    remote = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("rojo", "00f067aa0ba902b7"), ("congo", "t61rcWkgMzE")]),
    )
    return trace.set_span_in_context(NonRecordingSpan(remote))


async def test_the_request_tracestate_reaches_the_attempts_span_context(dsn, conn, spans):
    tracer = trace.get_tracer("tests")
    async with Client(dsn) as client:
        with tracer.start_as_current_span("request", context=request_with_tracestate()):
            tid = await client.submit("traced", {})
            bulk = await client.submit_many("traced", [{}])
            flow = await client.submit(chain(task_node("traced", name="a")))
    stored = {r["id"]: r["tracestate"] for r in await conn.fetch(
        "SELECT id, tracestate FROM pgtasks.tasks")}  # fmt: skip
    assert [stored[i] for i in (tid, *bulk, *flow.nodes.values())] == [TS] * 3
    await run_until_done(dsn, conn, tid)
    (span,) = attempt_spans(spans, tid)
    assert span.parent is not None and span.parent.trace_state.to_header() == TS
    assert span.context.trace_state.to_header() == TS


async def test_a_task_submitted_outside_any_trace_keeps_its_first_attempts_trace(dsn, conn, spans):
    tid = await conn.fetchval(
        "SELECT pgtasks.submit_task('traced', params => '{\"fail_first\": true}')"
    )
    await run_until_done(dsn, conn, tid)
    first, second = attempt_spans(spans, tid)
    # The first attempt is the root of a trace of its own; the retry is its child, linked.
    assert first.parent is None
    assert second.context.trace_id == first.context.trace_id
    assert second.parent is not None and second.parent.span_id == first.context.span_id
    assert [link.context.span_id for link in second.links] == [first.context.span_id]
    stored = await conn.fetchval("SELECT traceparent FROM pgtasks.tasks WHERE id = $1", tid)
    assert stored == traceparent_of(first)


async def test_an_untraced_task_that_waits_for_an_event_keeps_its_first_attempts_trace(
    dsn, conn, spans
):
    tid = await conn.fetchval("SELECT pgtasks.submit_task('awaits')")
    w = Worker(dsn, registry=REG, poll_interval=0.1)
    run = asyncio.create_task(w.run())
    try:
        # The wait parks the task: its attempt ends inside wait_for_event, not in the worker.
        await wait_for(
            conn,
            "SELECT count(*) FROM pgtasks.task_history WHERE task_id = $1"
            " AND note LIKE 'waiting for event go%'",
            tid,
        )
        await conn.execute("SELECT pgtasks.send_event($1, 'go', '1'::jsonb)", tid)
        await wait_for(conn, "SELECT status = 'DONE' FROM pgtasks.tasks WHERE id = $1", tid)
    finally:
        w.stop()
        await asyncio.wait_for(run, 30)
    first, second = attempt_spans(spans, tid)
    assert first.parent is None
    assert second.context.trace_id == first.context.trace_id
    assert second.parent is not None and second.parent.span_id == first.context.span_id


async def test_record_trace_is_fenced_and_never_replaces_a_submits_context(conn):
    plain = await conn.fetchval("SELECT pgtasks.submit_task('t', priority => 1)")
    traced = await conn.fetchval("SELECT pgtasks.submit_task('t', traceparent => $1)", TP)
    rows = await conn.fetch("SELECT * FROM pgtasks.claim_tasks('w1', max_tasks => 2)")
    tokens = {r["id"]: r["lease_token"] for r in rows}
    record = "SELECT pgtasks.record_trace($1, $2, $3)"
    with pytest.raises(asyncpg.PostgresError) as err:
        await conn.fetchval(record, plain, "0" * 64, TP2)
    assert err.value.sqlstate == "PT002"
    assert await conn.fetchval(record, traced, tokens[traced], TP2) is False
    assert await conn.fetchval(record, plain, tokens[plain], TP2) is True
    got = dict(await conn.fetch("SELECT id, traceparent FROM pgtasks.tasks"))
    assert got == {plain: TP2, traced: TP}


async def test_keyed_bulk_and_workflow_submits_carry_the_callers_span(dsn, conn, spans):
    tracer = trace.get_tracer("tests")
    async with Client(dsn) as client:
        with tracer.start_as_current_span("request") as request:
            keyed = await client.submit("traced", {}, unique_key="k")
            bulk = await client.submit_many("traced", [{}, {}])
            keyed_bulk = await client.submit_many("traced", [{}], unique_keys=["u"])
            flow = await client.submit(
                chain(task_node("traced", name="a"), group(task_node("traced", name="b")))
            )
        untraced = await client.submit_many("traced", [{}])
    stored = dict(await conn.fetch("SELECT id, traceparent FROM pgtasks.tasks"))
    ids = [keyed, *bulk, *keyed_bulk, *flow.nodes.values()]
    assert [stored[i] for i in ids] == [traceparent_of(request)] * 6
    assert stored[untraced[0]] is None
    # The workflow's nodes run in the request's trace, each a child of the request span.
    await run_until_done(dsn, conn, flow.nodes["b"])
    req = request.get_span_context()
    for node in flow.nodes.values():
        (span,) = attempt_spans(spans, node)
        assert span.context.trace_id == req.trace_id
        assert span.parent is not None and span.parent.span_id == req.span_id


async def test_a_task_submitted_by_a_task_joins_the_attempts_trace(dsn, conn, spans):
    tid = await conn.fetchval(
        "SELECT pgtasks.submit_task('spawner', params => $1::text::jsonb, traceparent => $2)",
        json.dumps({"dsn": dsn}),
        TP,
    )
    await run_until_done(dsn, conn, tid)
    child = await conn.fetchval(
        "SELECT (result #>> '{}')::bigint FROM pgtasks.tasks WHERE id = $1", tid
    )
    await run_until_done(dsn, conn, child)
    (parent_span,) = attempt_spans(spans, tid)
    (child_span,) = attempt_spans(spans, child)
    submits = [e.attributes for e in parent_span.events if e.name == "pgtasks.submit"]
    assert submits == [{"pgtasks.task.ids": (child,), "pgtasks.task.type": "traced"}]
    assert f"{parent_span.context.trace_id:032x}" == TP.split("-")[1]
    assert child_span.context.trace_id == parent_span.context.trace_id
    assert child_span.parent is not None
    assert child_span.parent.span_id == parent_span.context.span_id


async def test_spawned_children_join_the_trace_of_the_attempt_that_spawned_them(dsn, conn, spans):
    tid = await conn.fetchval("SELECT pgtasks.submit_task('fans', traceparent => $1)", TP)
    await run_until_done(dsn, conn, tid)
    kid = await conn.fetchval(
        "SELECT (result #>> '{}')::bigint FROM pgtasks.tasks WHERE id = $1", tid
    )
    first, second = attempt_spans(spans, tid)  # parked in its wait, woken by its child
    (kid_span,) = attempt_spans(spans, kid)
    assert [(e.name, dict(e.attributes or {})) for e in first.events] == [
        ("pgtasks.spawn", {"pgtasks.spawn.name": "spawn#1", "pgtasks.spawn.children": 1}),
        ("pgtasks.wait", {"pgtasks.wait.children": True, "pgtasks.wait.state": "waiting"}),
    ]
    assert [e.name for e in second.events] == ["pgtasks.wait"]  # the spawn was stored
    assert kid_span.context.trace_id == first.context.trace_id
    assert f"{first.context.trace_id:032x}" == TP.split("-")[1]
    assert kid_span.parent is not None and kid_span.parent.span_id == first.context.span_id


async def test_sleeps_and_waits_are_events_of_the_attempts(dsn, conn, spans):
    tid = await conn.fetchval("SELECT pgtasks.submit_task('waits', traceparent => $1)", TP)
    w = Worker(dsn, registry=REG, poll_interval=0.1)
    run = asyncio.create_task(w.run())
    try:
        await wait_for(
            conn,
            "SELECT count(*) FROM pgtasks.task_history WHERE task_id = $1"
            " AND note LIKE 'waiting for event go%'",
            tid,
        )
        await conn.execute("SELECT pgtasks.send_event($1, 'go', '1'::jsonb)", tid)
        await wait_for(conn, "SELECT status = 'DONE' FROM pgtasks.tasks WHERE id = $1", tid)
    finally:
        w.stop()
        await asyncio.wait_for(run, 30)
    got = [
        [(e.name, dict(e.attributes or {})) for e in s.events] for s in attempt_spans(spans, tid)
    ]
    assert got[0] == [("pgtasks.snooze", {"pgtasks.snooze.seconds": 0.0})]
    got = got[1:]
    assert len(got) == 2
    for events, state in zip(got, ["waiting", "received"], strict=True):
        (sleep_name, sleep), (wait_name, wait) = events
        assert (sleep_name, sleep["pgtasks.sleep.name"], sleep["pgtasks.sleep.over"]) == (
            "pgtasks.sleep",
            "nap",
            True,
        )
        assert (wait_name, wait) == (
            "pgtasks.wait",
            {"pgtasks.wait.event": "go", "pgtasks.wait.state": state},
        )


def test_sync_client_submits_in_the_callers_span(dsn, spans):
    tracer = trace.get_tracer("tests")
    with SyncClient(dsn) as client, tracer.start_as_current_span("request") as request:
        tid = client.submit("traced", {})

    async def read() -> str | None:
        c = await asyncpg.connect(dsn)
        try:
            value: str | None = await c.fetchval(
                "SELECT traceparent FROM pgtasks.tasks WHERE id = $1", tid
            )
            return value
        finally:
            await c.close()

    assert asyncio.run(read()) == traceparent_of(request)


def test_sync_client_submits_the_callers_tracestate(dsn, spans):
    tracer = trace.get_tracer("tests")
    with (
        SyncClient(dsn) as client,
        tracer.start_as_current_span("request", context=request_with_tracestate()),
    ):
        tid = client.submit("traced", {})

    async def read() -> str | None:
        c = await asyncpg.connect(dsn)
        try:
            value: str | None = await c.fetchval(
                "SELECT tracestate FROM pgtasks.tasks WHERE id = $1", tid
            )
            return value
        finally:
            await c.close()

    assert asyncio.run(read()) == TS


def test_sync_client_bulk_and_workflow_submits_carry_the_callers_span(dsn, spans):
    tracer = trace.get_tracer("tests")
    with SyncClient(dsn) as client, tracer.start_as_current_span("request") as request:
        bulk = client.submit_many("traced", [{}, {}])
        flow = client.submit_workflow(chain(task_node("traced"), task_node("traced")))

    async def read() -> list[str | None]:
        c = await asyncpg.connect(dsn)
        try:
            rows = await c.fetch(
                "SELECT traceparent FROM pgtasks.tasks WHERE id = ANY($1::bigint[]) ORDER BY id",
                [*bulk, *flow.nodes.values()],
            )
            return [r["traceparent"] for r in rows]
        finally:
            await c.close()

    assert asyncio.run(read()) == [traceparent_of(request)] * 4


def test_without_a_tracer_provider_nothing_is_made():
    # A fresh interpreter: this module's provider is global to its process.
    code = (
        "from opentelemetry import trace\n"
        "from pgtasks import tracing\n"
        "with trace.get_tracer('x').start_as_current_span('s'):\n"
        "    assert tracing.current_traceparent() is None\n"
        "    assert tracing.start_attempt(task_id=1, task_type='t', queue='q', attempt=1,"
        " traceparent=None) is None\n"
        "print('off')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "off"


# -- a real worker process ------------------------------------------------------------------


@pytest.mark.slow
async def test_a_worker_process_joins_the_request_trace(dsn, conn, spawn_worker, tmp_path: Path,
                                                        monkeypatch, spans):  # fmt: skip
    out = tmp_path / "spans.jsonl"
    monkeypatch.setenv("PGTASKS_TEST_SPANS", str(out))
    tracer = trace.get_tracer("tests")
    async with Client(dsn) as client:
        with tracer.start_as_current_span("request") as request:
            tid = await client.submit("traced_step", {"fail_first": True})
    # A psql-style producer: the session setting, no SDK.
    await conn.execute(f"SET pgtasks.traceparent = '{TP}'")
    from_sql = await conn.fetchval("SELECT pgtasks.submit_task('traced_step')")
    spawn_worker.start("--concurrency", "2", app="tests/apps/traced.py")
    for t in (tid, from_sql):
        await wait_for(conn, "SELECT status = 'DONE' FROM pgtasks.tasks WHERE id = $1", t)

    def exported() -> list[dict[str, Any]]:
        return [json.loads(line) for line in out.read_text().splitlines() if line]

    # A span is exported as it ends, before the finish is written, so both are there.
    by_task: dict[str, list[dict[str, Any]]] = {}
    for s in exported():
        by_task.setdefault(s["attributes"].get("messaging.message.id"), []).append(s)
    req = request.get_span_context()
    attempts = sorted(by_task[str(tid)], key=lambda s: s["attributes"]["pgtasks.task.attempt"])
    assert [s["attributes"]["pgtasks.task.attempt"] for s in attempts] == [1, 2]
    for s in attempts:
        assert s["context"]["trace_id"] == f"0x{req.trace_id:032x}"
        assert s["parent_id"] == f"0x{req.span_id:016x}"
        assert s["kind"] == "SpanKind.CONSUMER"
        assert [link["context"]["span_id"] for link in s["links"]] == [f"0x{req.span_id:016x}"]
    assert attempts[0]["status"]["status_code"] == "ERROR"
    (sql_span,) = by_task[str(from_sql)]
    assert sql_span["context"]["trace_id"] == "0x" + TP.split("-")[1]
    assert sql_span["parent_id"] == "0x" + TP.split("-")[2]
