"""OpenTelemetry tracing across the queue (the `otel` extra: opentelemetry-api).

The one module that imports OpenTelemetry's tracing, and only if it is installed (its
metrics: pgtasks.worker.otel_metrics). A submit inside a recording span stores that span's
W3C `traceparent` and `tracestate` with the task (tasks.traceparent, tasks.tracestate);
each attempt of the task then runs in a CONSUMER span whose parent is that context and
which links to it, as OpenTelemetry's messaging conventions say for a message processed
after it was sent. A task submitted outside any trace has its first attempt start a trace
of its own; when that attempt hands the task on (a failure, a yield, a snooze, a wait that
parks it) the worker records the attempt's context as the task's (pgtasks.record_trace),
so every later attempt is a child of the first and linked to it. Without the package, or
while no tracer provider is configured (the API's default proxy), every function here
returns at its first test: no span, no context object, no string is made.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

try:
    from opentelemetry import trace as _trace
    from opentelemetry.trace import (
        Link,
        NonRecordingSpan,
        ProxyTracerProvider,
        SpanContext,
        SpanKind,
        Status,
        StatusCode,
        TraceFlags,
        TraceState,
    )
except ImportError:  # the otel extra is not installed
    _trace = None  # type: ignore[assignment]

#: The instrumentation scope of every span pgtasks starts.
SCOPE = "pgtasks"


def _tracing_on() -> bool:
    if _trace is None:
        return False
    provider = _trace.get_tracer_provider()
    return not isinstance(provider, ProxyTracerProvider | _trace.NoOpTracerProvider)


_NO_CONTEXT: tuple[None, None] = (None, None)


def current_context() -> tuple[str | None, str | None]:
    """The W3C traceparent and tracestate of the current span; (None, None) outside a
    valid span context, and a tracestate without entries is None.

    Read from the active span, so a submit made inside any instrumented request (or inside
    a task's attempt span, for its child tasks) carries it."""
    if _trace is None:
        return _NO_CONTEXT
    sc = _trace.get_current_span().get_span_context()
    if not sc.is_valid:
        return _NO_CONTEXT
    state = sc.trace_state.to_header() if sc.trace_state else None
    return _traceparent(sc), state or None


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, or None outside a valid span context."""
    return current_context()[0]


def _traceparent(sc: Any) -> str:
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"


def span_traceparent(span: Any) -> str | None:
    """The W3C traceparent of `span` itself (an attempt's), or None for no span."""
    return None if span is None else _traceparent(span.get_span_context())


def parse_traceparent(value: str | None, tracestate: str | None = None) -> Any:
    """The remote SpanContext of a stored traceparent and tracestate (the database checked
    both forms), or None."""
    if _trace is None or not value:
        return None
    _, trace_id, span_id, flags = value.split("-")
    return SpanContext(
        trace_id=int(trace_id, 16),
        span_id=int(span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(int(flags, 16)),
        trace_state=TraceState.from_header([tracestate]) if tracestate else None,
    )


def start_attempt(
    *,
    task_id: int,
    task_type: str,
    queue: str,
    attempt: int,
    traceparent: str | None,
    tracestate: str | None = None,
) -> Any:
    """The span of one attempt, started but not made current; None while tracing is off.

    Attributes follow the messaging semantic conventions (messaging.*), plus the task's
    type and attempt number under pgtasks.*. Without a traceparent the span is the root of
    a new trace (see the module's docstring for its later attempts)."""
    if not _tracing_on():
        return None
    origin = parse_traceparent(traceparent, tracestate)
    parent = None
    links: list[Link] = []
    if origin is not None:
        parent = _trace.set_span_in_context(NonRecordingSpan(origin))
        links.append(Link(origin))
    return _trace.get_tracer(SCOPE).start_span(
        f"process {queue}",
        context=parent,
        kind=SpanKind.CONSUMER,
        links=links,
        attributes={
            "messaging.system": "pgtasks",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": queue,
            "messaging.message.id": str(task_id),
            "pgtasks.task.type": task_type,
            "pgtasks.task.attempt": attempt,
        },
    )


@contextmanager
def current(span: Any) -> Iterator[None]:
    """Make `span` the current span for the block (the task's code and its submits)."""
    if span is None:
        yield
        return
    with _trace.use_span(
        span, end_on_exit=False, record_exception=False, set_status_on_exception=False
    ):
        yield


def end_attempt(span: Any, outcome: str, error: str | None = None) -> None:
    """End an attempt's span: `outcome` as pgtasks.outcome, an error as the ERROR status."""
    if span is None:
        return
    span.set_attribute("pgtasks.outcome", outcome)
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()


def record_exception(exc: BaseException) -> None:
    """Record `exc` on the current span (the attempt's, inside `current`), if it records."""
    if _trace is None:
        return
    span = _trace.get_current_span()
    if span.is_recording():
        span.record_exception(exc)


def step_event(name: str, attributes: dict[str, Any]) -> None:
    """An event on the current span (a step, a checkpoint, a wait), if it records."""
    if _trace is None:
        return
    span = _trace.get_current_span()
    if span.is_recording():
        span.add_event(name, attributes)


def submit_event(task_type: str | None, ids: list[int]) -> None:
    """A `pgtasks.submit` event on the current span naming the tasks a submit made (a
    task's child tasks, a request's tasks), if it records; nothing is built otherwise."""
    if _trace is None:
        return
    span = _trace.get_current_span()
    if span.is_recording():
        attrs: dict[str, Any] = {"pgtasks.task.ids": [int(i) for i in ids]}
        if task_type is not None:
            attrs["pgtasks.task.type"] = task_type
        span.add_event("pgtasks.submit", attrs)
