"""`pgtasks worker` from the environment (flags win), JSON logs, --metrics-port, and
`pgtasks serve` binding to 127.0.0.1 and saying so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from pgtasks.cli import cli as pgtasks_cli
from tests.conftest import ROOT
from tests.test_cli import cli
from tests.web.test_fastapi_app import free_port


def test_worker_help_names_every_variable():
    out = CliRunner().invoke(pgtasks_cli, ["worker", "--help"], terminal_width=200)
    assert out.exit_code == 0
    for var in ("APP", "QUEUES", "CONCURRENCY", "THREADS", "PREFETCH", "POLL_INTERVAL", "LEASE",
                "NO_LISTEN", "PGBOUNCER", "BURST", "GRACE", "METRICS_PORT", "LOG_LEVEL",
                "LOG_FORMAT"):  # fmt: skip
        assert f"PGTASKS_{var}" in out.output, var


@pytest.mark.slow
def test_options_come_from_the_environment_and_flags_win(dsn):
    env = {**os.environ, "PGTASKS_APP": "missing.py"}
    run = [sys.executable, "-m", "pgtasks.cli", "--database-url", dsn, "worker"]
    out = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert "missing.py: no such file" in out.stderr
    out = subprocess.run([*run, "--app", "no_such_module_xyz"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert "module not found" in out.stderr
    env["PGTASKS_CONCURRENCY"] = "0"
    out = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "concurrency" in out.stderr.lower()


@pytest.mark.slow
def test_burst_worker_from_env_logs_json_and_serves_its_metrics(dsn):
    assert cli(dsn, "submit", "noop").returncode == 0
    port = free_port()
    env = {**os.environ, "PGTASKS_DATABASE_URL": dsn, "PGTASKS_APP": "tests/apps/basic.py",
           "PGTASKS_LOG_FORMAT": "json", "PGTASKS_METRICS_PORT": str(port),
           "PGTASKS_POLL_INTERVAL": "0.1"}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgtasks.cli", "worker"], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        claimed = 0.0
        while claimed < 1:
            assert time.monotonic() < deadline and proc.poll() is None
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/").text
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            fams = {f.name: f for f in text_string_to_metric_families(text)}
            claimed = fams["pgtasks_worker_claimed_tasks"].samples[0].value
            time.sleep(0.1)
        claims = {s.name: s.value for s in fams["pgtasks_worker_claim_seconds"].samples}
        assert claims["pgtasks_worker_claim_seconds_count"] >= 1
        assert "pgtasks_worker_finish_batch_size" in fams
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert lines and {"time", "level", "logger", "message"} <= set(lines[0])


@pytest.mark.slow
def test_serve_binds_localhost_and_says_so(dsn):
    port = free_port()
    env = {**os.environ, "PGTASKS_DATABASE_URL": dsn}
    proc = subprocess.Popen([sys.executable, "-m", "pgtasks.cli", "serve", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in first and "this machine only" in first
        assert "no PGTASKS_API_TOKEN" in proc.stdout.readline()
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/tasks")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        assert r.status_code == 200 and r.json()["total"] == 0
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 200
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


@pytest.mark.slow
def test_the_core_import_stays_without_the_web_stack():
    code = "import sys, pgtasks; print(sorted(m for m in ('fastapi', 'uvicorn', "
    code += "'prometheus_client', 'starlette', 'sqlalchemy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_buckets_are_cumulative_the_prometheus_way():
    from pgtasks.worker.base import Buckets

    b = Buckets((1.0, 5.0))
    for v in (0.5, 1.0, 3, 7):
        b.observe(v)
    assert b.cumulative() == [("1.0", 2), ("5.0", 3), ("+Inf", 4)]
    assert (b.count, b.sum) == (4, 11.5)
