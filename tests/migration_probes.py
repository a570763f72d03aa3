"""A copy of sql/ with extra deltas after the shipped ones, for the migration runner's tests,
and a way to run the real `pgtasks` command line over it."""

from __future__ import annotations

import sys
from pathlib import Path

from pgtasks.migrations import available, sql_dir


def probe_sql_dir(root: Path, *texts: str) -> tuple[Path, list[str]]:
    """sql/ as shipped (linked) plus `texts` as the next numbered deltas: the folder and the
    probes' file names."""
    real = sql_dir()
    folder = root / "sql"
    folder.mkdir()
    (folder / "schema").symlink_to(real / "schema")
    shipped = available()
    for mig in shipped:
        (folder / mig.path.name).symlink_to(mig.path)
    names = []
    for n, text in enumerate(texts, shipped[-1].version + 1):
        names.append(f"{n:04d}_probe_{n}.sql")
        (folder / names[-1]).write_text(text)
    return folder, names


# `pgtasks` with sql_dir() pointed at argv[1]: the real command line over a probe folder.
_CLI_WITH_SQL_DIR = """
import sys
from pathlib import Path
import pgtasks.migrations as m
folder = Path(sys.argv.pop(1))
m.sql_dir = lambda: folder
from pgtasks.cli import main
sys.argv[0] = "pgtasks"
main()
"""


def pgtasks_command(*args: str, sql: Path | None = None) -> list[str]:
    """The argv of `pgtasks ARGS`, reading its migrations from `sql` when given."""
    if sql is None:
        return [sys.executable, "-m", "pgtasks.cli", *args]
    return [sys.executable, "-c", _CLI_WITH_SQL_DIR, str(sql), *args]
