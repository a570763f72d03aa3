"""squawk over the numbered deltas from FIRST_LINTED on: `python -m tests.squawk` (make lint).

Ordinary deltas are linted as one transaction each, which is how `pgtasks migrate` runs
them; a `-- pgtasks: no-transaction` delta as separate statements, without squawk's
prefer-robust-stmts (the runner refuses every statement of such a file that could not run
twice, which is stricter). `--landed` counts the findings in the deltas before
FIRST_LINTED instead, rule by rule, for CONTRIBUTING.md.
"""

from __future__ import annotations

import collections
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from pgtasks.migrations import Migration, available

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / ".squawk.toml"
# The first delta written under the lock-timeout runner; the ones before it have landed.
FIRST_LINTED = 24


def squawk() -> str:
    found = shutil.which("squawk", path=str(Path(sys.executable).parent)) or shutil.which("squawk")
    if found is None:
        raise SystemExit("squawk is not installed: pip install squawk-cli (make lint does)")
    return found


def command(migs: list[Migration], *, no_transaction: bool, reporter: str = "tty") -> list[str]:
    argv = [squawk(), "--config", str(CONFIG), f"--reporter={reporter}"]
    if no_transaction:
        # An --exclude on the command line replaces the config's list rather than adding
        # to it, so the list is passed whole.
        excluded = tomllib.loads(CONFIG.read_text())["excluded_rules"] + ["prefer-robust-stmts"]
        argv += ["--no-assume-in-transaction", f"--exclude={','.join(excluded)}"]
    return argv + [str(m.path.relative_to(ROOT)) for m in migs]


def lint(migs: list[Migration]) -> int:
    status = 0
    for no_transaction in (False, True):
        group = [m for m in migs if m.no_transaction == no_transaction]
        if group:
            status |= subprocess.run(
                command(group, no_transaction=no_transaction), cwd=ROOT
            ).returncode
    return status


def landed_table(migs: list[Migration]) -> str:
    counts: collections.Counter[str] = collections.Counter()
    files: dict[str, set[str]] = collections.defaultdict(set)
    for no_transaction in (False, True):
        group = [m for m in migs if m.no_transaction == no_transaction]
        if not group:
            continue
        out = subprocess.run(
            command(group, no_transaction=no_transaction, reporter="json"),
            cwd=ROOT, capture_output=True, text=True,
        ).stdout  # fmt: skip
        for finding in json.loads(out or "[]"):
            counts[finding["rule_name"]] += 1
            files[finding["rule_name"]].add(Path(finding["file"]).name[:4])
    lines = ["| rule | findings | files |", "| --- | --- | --- |"]
    for rule, n in counts.most_common():
        lines.append(f"| {rule} | {n} | {', '.join(sorted(files[rule]))} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    migs = available()
    if argv == ["--landed"]:
        print(landed_table([m for m in migs if m.version < FIRST_LINTED]))
        return 0
    new = [m for m in migs if m.version >= FIRST_LINTED]
    if not new:
        print(f"squawk: no delta from {FIRST_LINTED:04d} on yet")
        return 0
    return lint(new)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
