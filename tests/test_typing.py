"""What a user's type checker sees: mypy over the examples and the README's Python.

pgtasks ships `py.typed`, so its signatures are part of its API: a decorated function must
keep its `.s()` (workflow nodes), `submit()` must return an id, not Any, and a misspelt
keyword must be an error. mypy runs as the user's would, from the same Python as the
tests, with pgtasks (this checkout) followed but its own errors silenced: only the user's
files are judged.

* examples/*.py: `--strict`, as a careful user would run it.
* The README's "From Python" snippets: strict too, except the flags that judge the user's
  own annotations (the README writes `def checksum(ctx, params: dict)` for brevity);
  everything about pgtasks' side (typed decorators, return types, re-exports) stays on.
* A file of deliberate mistakes, each of which must be reported.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Per-module flags for the README's snippets (see the module docstring).
README_RELAXED = ("allow_untyped_defs", "allow_incomplete_defs", "allow_any_generics")

# The workflow snippet uses tasks it does not define; these stand in for them, one class
# (Extract.s is BaseTask's classmethod) and the rest functions (.s from the decorator).
WORKFLOW_TASKS = """
from typing import Any

from pgtasks import BaseTask, Client, TaskContext, task_register


@task_register("readme.extract")
class Extract(BaseTask):
    async def execute(self, ctx: TaskContext, params: dict[str, Any]) -> list[int]:
        return [1, 2, 3]


@task_register("readme.transform")
async def transform(ctx: TaskContext, params: dict[str, Any]) -> list[int]:
    return []


@task_register("readme.load")
def load(ctx: TaskContext, params: dict[str, Any]) -> int:
    return 0


@task_register("readme.process")
async def process(ctx: TaskContext, params: dict[str, Any]) -> int:
    return 0


@task_register("readme.notify")
async def notify(ctx: TaskContext, params: dict[str, Any]) -> None:
    return None


async def workflow_snippet(client: Client) -> None:
"""

# Each line marked `# E: text` must get a mypy error containing that text.
MISTAKES = """
from typing import Any

from pgtasks import BaseTask, Client, SyncClient, TaskContext, chain, task_register


@task_register("mistakes.fn")
async def fn(ctx: TaskContext, params: dict[str, Any]) -> int:
    return 0


@task_register("mistakes.cls")
class Cls(BaseTask):
    pass


async def with_client(client: Client, sync: SyncClient) -> None:
    task_id: str = await client.submit(fn)  # E: expression has type "SubmitResult"
    await client.submit(fn, unique_kye="k")  # E: Unexpected keyword argument "unique_kye"
    sync.submit(fn, unique_kye="k")  # E: Unexpected keyword argument "unique_kye"
    sync.wait(1, poll_intervall=1)  # E: Unexpected keyword argument "poll_intervall"
    await client.list(limit=1)  # E: "Client" has no attribute "list"
    fn.s(queu="q")  # E: Unexpected keyword argument "queu"
    Cls.s(priority="high")  # E: incompatible type "str"
    chain(fn.s(), 3)  # E: incompatible type "int"
    fn.t()  # E: has no attribute "t"
"""


def _readme_snippets() -> list[str]:
    """The ```python blocks of the README's "From Python" section, in order."""
    text = (ROOT / "README.md").read_text()
    start = text.index("## From Python")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def _mypy(tmp_path: Path, *files: Path, config: str) -> subprocess.CompletedProcess[str]:
    ini = tmp_path / "mypy.ini"
    ini.write_text(config)
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ini),
         "--cache-dir", str(tmp_path / "cache"), "--no-error-summary",
         "--follow-imports=silent", "--show-error-codes", *map(str, files)],
        cwd=ROOT, capture_output=True, text=True, check=False,
        env={**os.environ, "MYPYPATH": str(ROOT)},
    )  # fmt: skip


def test_examples_and_the_readme_type_check_strictly(tmp_path):
    blocks = _readme_snippets()
    assert len(blocks) >= 2, "the README's From Python section lost its snippets"
    readme = tmp_path / "readme_snippets.py"
    readme.write_text(
        blocks[0] + WORKFLOW_TASKS + "".join(textwrap.indent(b, "    ") for b in blocks[1:])
    )
    relaxed = "".join(f"{flag} = True\n" for flag in README_RELAXED)
    examples = sorted((ROOT / "examples").glob("*.py"))
    result = _mypy(
        tmp_path, *examples, readme,
        config=f"[mypy]\nstrict = True\n[mypy-readme_snippets]\n{relaxed}",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_mistakes_are_type_errors(tmp_path):
    source = tmp_path / "mistakes.py"
    source.write_text(MISTAKES)
    result = _mypy(tmp_path, source, config="[mypy]\nstrict = True\n")
    errors: dict[int, list[str]] = {}
    for line in result.stdout.splitlines():
        m = re.match(r".*mistakes\.py:(\d+): error: (.*)", line)
        if m:
            errors.setdefault(int(m[1]), []).append(m[2])
    expected = {
        n: want.strip()
        for n, text in enumerate(MISTAKES.splitlines(), start=1)
        if "# E:" in text
        for want in [text.split("# E:", 1)[1]]
    }
    missing = {
        n: want for n, want in expected.items() if not any(want in e for e in errors.get(n, []))
    }
    assert not missing, f"not reported: {missing}\nmypy said:\n{result.stdout}{result.stderr}"
    unexpected = {n: e for n, e in errors.items() if n not in expected}
    assert not unexpected, f"errors where none were expected: {unexpected}"
