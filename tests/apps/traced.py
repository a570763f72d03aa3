"""A worker app that exports its spans with the OpenTelemetry SDK, one JSON object per line,
to the file named by PGTASKS_TEST_SPANS (tests/test_tracing.py reads them back)."""

from __future__ import annotations

import os
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from pgtasks import task_register
from pgtasks.context import TaskContext

_out = open(os.environ["PGTASKS_TEST_SPANS"], "a", buffering=1)  # noqa: SIM115 (lives with the process)
_provider = TracerProvider()
_provider.add_span_processor(
    SimpleSpanProcessor(
        ConsoleSpanExporter(out=_out, formatter=lambda span: span.to_json(indent=None) + "\n")
    )
)
trace.set_tracer_provider(_provider)


@task_register("traced_step", max_retries=1, backoff_base=0.05)
async def traced_step(ctx: TaskContext, params: dict[str, Any]) -> str:
    await ctx.step("fetch", lambda: "fetched")
    if ctx.attempt == 1 and params.get("fail_first"):
        raise RuntimeError("first attempt fails")
    return "ok"
