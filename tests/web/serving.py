"""`pgtasks serve` as a real subprocess (real uvicorn) for the tests that need sockets:
the fuzzer, half-sent requests, streams against the pool."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from tests.conftest import ROOT
from tests.web.test_fastapi_app import free_port


@dataclass
class Served:
    port: int
    proc: subprocess.Popen[str]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def serve(dsn: str, **env: str) -> Iterator[Served]:
    """Run `pgtasks serve` on a free port with PGTASKS_* `env` (names without the prefix)
    until the block ends; ready when /metrics answers."""
    port = free_port()
    # Only the settings named here: none leaks in from the environment of the test run.
    full = {k: v for k, v in os.environ.items() if not k.startswith("PGTASKS_")}
    full["PGTASKS_DATABASE_URL"] = dsn
    full.update({f"PGTASKS_{k.upper()}": v for k, v in env.items()})
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgtasks.cli", "serve", "--port", str(port), "--log-level", "ERROR"],
        cwd=ROOT, env=full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    served = Served(port, proc)
    try:
        deadline = time.monotonic() + 60  # bounds a hung start, not a speed check
        while True:
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read() if proc.stderr else "serve exited")
            try:
                if httpx.get(f"{served.base}/metrics").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "pgtasks serve did not start"
            time.sleep(0.1)
        yield served
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
