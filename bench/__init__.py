"""Benchmarks: pgtasks side by side with procrastinate and PgQueuer (see bench/README.md)."""

from __future__ import annotations

import sys

if "--no-otel" in sys.argv:  # a worker of drain_1_no_otel: runs as if the otel extra were absent
    sys.modules["opentelemetry"] = None  # type: ignore[assignment]
