"""Benchmarks: pgtasks side by side with procrastinate and PgQueuer (see bench/README.md)."""

from __future__ import annotations
