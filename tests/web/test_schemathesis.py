"""Schemathesis (its CLI, as its docs run it) against a real `pgtasks serve`, with and without a
token: every default check, the positive-data check as tests/web/schemathesis_hooks.py
refines it, and no failure of any kind (server errors, schema violations, undocumented
status codes, wrong Allow headers, refused valid data, accepted invalid data, ignored auth).

`make test` runs 5 examples per operation in the fuzzing phase, and the coverage phase (every
boundary and invalid value of every parameter; about 20 s of each run on a 2-core machine)
without a token only: with a token the schema and the handlers are the same, and what the
token run adds (no operation answers without the token) every phase checks. PGTASKS_LONG=1
runs 50 examples and every phase in both runs; PGTASKS_SCHEMATHESIS_EXAMPLES sets the
examples, PGTASKS_SCHEMATHESIS_SEED picks another seed.

GET /tasks/{id}/events is left out: a stream for a pending task stays open until the task
ends, which no worker here makes happen, so the fuzzer's request would only time out. Its
parameters are the detail's, and test_hardening.py tests its bounds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import LONG, ROOT, knob
from tests.web.serving import serve

pytestmark = pytest.mark.slow

EXAMPLES = knob("PGTASKS_SCHEMATHESIS_EXAMPLES", 5, 50)
SEED = os.environ.get("PGTASKS_SCHEMATHESIS_SEED", "1")
TOKEN = "fuzz-token"


def failures(report: Path) -> Counter[str]:
    """Unique failures of the run, as `code title: operation`, from its NDJSON events."""
    seen: set[tuple[str, str, str]] = set()
    for line in report.read_text().splitlines():
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if not finished:
            continue
        for results in (finished["recorder"].get("checks") or {}).values():
            for check in results:
                info = check.get("failure_info")
                if check.get("status") == "failure" and info:
                    f = info["failure"]
                    seen.add((f.get("code", "?"), f.get("title", "?"), f.get("operation", "?")))
    return Counter(f"{code} {title}: {operation}" for code, title, operation in seen)


@pytest.mark.parametrize("token", [None, TOKEN], ids=["no-token", "token"])
def test_the_fuzzer_finds_nothing(dsn, tmp_path, token):
    env = {"api_token": token} if token else {}
    with serve(dsn, **env) as server:
        report = tmp_path / "events.ndjson"
        cmd = [
            sys.executable, "-m", "schemathesis.cli", "run", f"{server.base}/openapi.json",
            "--max-examples", str(EXAMPLES), "--seed", SEED, "--no-color",
            "--exclude-path-regex", "/events$",
            # Replaced by the hooks' check (the database's own refusals are its to make).
            "--exclude-checks", "positive_data_acceptance",
            "--generation-database", "none",
            "--report", "ndjson", "--report-ndjson-path", str(report),
        ]  # fmt: skip
        if token:
            cmd += ["--header", f"Authorization: Bearer {token}"]
            if not LONG:
                cmd += ["--phases", "examples,fuzzing,stateful"]
        env_run = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.web.schemathesis_hooks"}
        env_run["PYTHONPATH"] = os.pathsep.join([str(ROOT), env_run.get("PYTHONPATH", "")])
        run = subprocess.run(
            cmd, cwd=tmp_path, env=env_run, capture_output=True, text=True, timeout=900
        )
    found = failures(report) if report.exists() else Counter()
    summary = "\n".join(sorted(found)) or run.stdout[-3000:] + run.stderr[-2000:]
    assert not found, f"schemathesis found {len(found)} failures:\n{summary}"
    assert run.returncode == 0, summary
    assert "generated" in run.stdout and " passed" in run.stdout, run.stdout[-2000:]
