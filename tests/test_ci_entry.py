"""The CI entry point is code too: a syntax error in `.ci/run` stops CI before any test runs.

`make test` does not run `.ci/run`, so a broken edit to it passed a whole local suite once and
failed CI after 0 s. `bash -n` parses the script without running it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CI_RUN = Path(__file__).resolve().parent.parent / ".ci" / "run"


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_ci_run_parses() -> None:
    result = subprocess.run(["bash", "-n", str(CI_RUN)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_ci_run_ends_with_make_test() -> None:
    lines = [ln.strip() for ln in CI_RUN.read_text().splitlines() if ln.strip()]
    assert lines[-1] == "make test"
    assert CI_RUN.stat().st_mode & 0o111, ".ci/run must be executable"
