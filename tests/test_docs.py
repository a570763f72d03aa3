"""Docs that cannot drift from the code.

* The site builds with `mkdocs build --strict` (`make docs`): no broken link or reference,
  no public name without a docstring (docs/reference/_hooks.py), and a made-up
  undocumented name does fail a build.
* Every ```python block of README.md and docs/*.md compiles, and every pgtasks name it uses
  exists: `from pgtasks import X`, `pgtasks.x.y`, `X.attr` of an imported name, and
  `client.<method>` / `ctx.<method>` on the Client and the task context.
* Every `pgtasks ...` command of a ```sh / ```bash block, or of an indented block, names a
  real subcommand with real options (read from click's command tree, nothing runs).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest

from pgtasks.cli import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"sh", "bash", "shell", "console", "shell-session"}
# What a variable of this name in a doc example is taken to be.
RECEIVERS = {
    "client": ("pgtasks.Client", "pgtasks.SyncClient"),
    "ctx": ("pgtasks.TaskContext", "pgtasks.SyncTaskContext"),
    "worker": ("pgtasks.Worker",),
}


@dataclass
class Block:
    path: str
    line: int  # 1-based line of the block's first line of code
    lang: str
    code: str


def blocks(text: str, path: str = "<text>") -> Iterator[Block]:
    """Fenced code blocks (``` or ~~~, indented ones in lists too), dedented."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(```+|~~~+)\s*([\w-]*)", lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.groups()
        start = i + 1
        j = start
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        body = [ln[len(indent) :] if ln.startswith(indent) else ln for ln in lines[start:j]]
        yield Block(path, start + 1, lang.lower(), "\n".join(body) + "\n")
        i = j + 1


def command_lines(text: str, path: str = "<text>") -> Iterator[Block]:
    """`pgtasks ...` commands outside the shell blocks: lines of indented (unfenced) code
    and of fences without a language, with a syntax summary's continuation lines
    (`    [--prefetch N] ...`) joined on, and inline code spans (`pgtasks serve`)."""
    in_fence: str | None = None
    current: Block | None = None
    for n, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^\s*(```|~~~)\s*([\w-]*)", line)
        if fence:
            in_fence = None if in_fence is not None else fence.group(2).lower()
            continue
        if in_fence not in (None, ""):
            continue  # a block with a language: the checks by language have it
        code = line if in_fence == "" else (line[4:] if line.startswith("    ") else None)
        if code is None:
            if current is not None:
                yield current
                current = None
            yield from _inline_commands(line, path, n)
            continue
        if current is not None and re.match(r"^\s{4,}[\[-]", code):
            current.code += " " + _command_part(code)
            continue
        if current is not None:
            yield current
            current = None
        if re.match(r"^\s*(?:\$ )?(?:\S*/)?pgtasks\s", code):
            current = Block(path, n, "command", _command_part(code).removeprefix("$ "))
    if current is not None:
        yield current


def _command_part(code: str) -> str:
    """A summary's description starts after a wide gap: `pgtasks migrate    create...`."""
    return re.split(r"\s{3,}(?=[^\s#\[|-])", code.strip(), maxsplit=1)[0]


def _inline_commands(line: str, path: str, n: int) -> Iterator[Block]:
    for m in re.finditer(r"`((?:\S*/)?pgtasks [^`]+)`", line):
        yield Block(path, n, "command", m.group(1))


# -- python blocks ------------------------------------------------------------------------


def _resolve(dotted: str) -> Any:
    """The object a dotted pgtasks path names: the longest importable module prefix, then
    attributes. Raises LookupError naming the first part that does not exist."""
    parts = dotted.split(".")
    obj: Any = None
    k = len(parts)
    while k > 0:
        name = ".".join(parts[:k])
        try:
            if importlib.util.find_spec(name) is not None:
                obj = importlib.import_module(name)
                break
        except ModuleNotFoundError:
            pass
        k -= 1
    if obj is None:
        raise LookupError(f"no module {parts[0]!r}")
    for i, attr in enumerate(parts[k:], k):
        if not hasattr(obj, attr):
            try:  # a submodule not imported by its package yet
                obj = importlib.import_module(".".join(parts[: i + 1]))
                continue
            except ModuleNotFoundError:
                raise LookupError(f"{'.'.join(parts[:i])} has no {attr!r}") from None
        obj = getattr(obj, attr)
    return obj


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def python_problems(code: str) -> list[str]:
    """What is wrong with one python block: a syntax error, or a pgtasks name that does
    not exist."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        try:  # doc snippets may await at the top level, as in an async REPL
            compile(code, "<doc>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            tree = ast.parse(f"async def _():\n{_indent(code)}")
        except SyntaxError as exc:
            return [f"does not compile: {exc.msg} (line {exc.lineno})"]
    problems: list[str] = []
    names: dict[str, str] = {}  # local name -> dotted pgtasks path

    def check(dotted: str, line: int) -> None:
        try:
            _resolve(dotted)
        except LookupError as exc:
            problems.append(f"line {line}: {dotted}: {exc}")

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pgtasks":
            for alias in node.names:
                check(f"{node.module}.{alias.name}", node.lineno)
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "pgtasks":
                    check(alias.name, node.lineno)
                    names[alias.asname or alias.name.split(".")[0]] = alias.name.split(".")[0]
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or isinstance(node.ctx, ast.Store):
            continue
        dotted = _dotted(node)
        if dotted is None:
            continue
        head, _, rest = dotted.partition(".")
        if head == "pgtasks" or head in names:
            check(f"{names.get(head, head)}.{rest}", node.lineno)
        elif head in RECEIVERS and "." not in rest:
            kinds = [_resolve(k) for k in RECEIVERS[head]]
            if not any(rest in _members(k) for k in kinds):
                on = " or ".join(k.__name__ for k in kinds)
                problems.append(f"line {node.lineno}: {head}.{rest}: {on} has no {rest!r}")
    return sorted(set(problems))


def _members(cls: type) -> set[str]:
    """A class's attributes, with those its methods assign to `self` (ctx.attempt)."""
    names = set(dir(cls))
    for klass in cls.__mro__:
        if not klass.__module__.startswith("pgtasks"):
            continue
        for node in ast.walk(ast.parse(inspect.getsource(klass))):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
            ):
                names.add(node.attr)
    return names


def _indent(code: str) -> str:
    return "".join(f"    {ln}\n" for ln in code.splitlines()) or "    pass\n"


# -- shell commands -----------------------------------------------------------------------

_WRAPPERS = {"exec", "nohup", "time", "env", "sudo", "timeout", "watch"}
_OPERATORS = {"|", "||", "&", "&&", ";", "(", ")", ";;", "<", ">", ">>", "2>", "&>"}


def _all_options(cmd: click.Command) -> dict[str, click.Parameter]:
    opts: dict[str, click.Parameter] = {}
    for p in cmd.get_params(click.Context(cmd)):
        if isinstance(p, click.Option):
            for o in (*p.opts, *p.secondary_opts):
                opts[o] = p
    return opts


def _tree(cmd: click.Command) -> Iterator[click.Command]:
    yield cmd
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            yield from _tree(sub)


def check_cli_args(args: list[str]) -> list[str]:
    """Problems with `pgtasks ARGS` against click's tree: subcommands, options, arity."""
    cmd: click.Command = cli
    path = "pgtasks"
    positional = 0
    i = 0
    while i < len(args):
        tok = args[i]
        i += 1
        if tok == "--":
            break
        if tok.startswith("-") and tok != "-":
            name = tok.split("=", 1)[0]
            opt = _all_options(cmd).get(name)
            if opt is None:
                return [f"`{path}` has no option {name}"]
            assert isinstance(opt, click.Option)
            if "=" not in tok and not opt.is_flag and not opt.count:
                i += max(opt.nargs, 1)
            continue
        if isinstance(cmd, click.Group):
            sub = cmd.commands.get(tok)
            if sub is None:
                return [f"`{path}` has no subcommand {tok!r}"]
            cmd, path = sub, f"{path} {tok}"
            continue
        positional += 1
    arity = [p.nargs for p in cmd.params if isinstance(p, click.Argument)]
    if -1 not in arity and positional > sum(arity):
        return [f"`{path}` takes {sum(arity)} argument(s), the docs give {positional}"]
    return []


def check_cli_summary(line: str) -> list[str]:
    """A syntax summary (`pgtasks queues [pause Q | set Q [--rate 10/s]]`): the first word
    must be a subcommand, and each option must exist on that command or under it (on any
    command, where `|` offers top-level alternatives)."""
    words = line.replace("[", " ").replace("]", " ").split()
    first = words[1] if len(words) > 1 else None
    if first is None or first.startswith("-"):
        return []
    top = cli.commands.get(first.split("|")[0])
    if top is None:
        return [f"`pgtasks` has no subcommand {first.split('|')[0]!r}"]
    scope = list(_tree(cli if re.search(r"\s\|\s", line) else top))
    known = {o for c in scope for o in _all_options(c)}
    return [
        f"`{line}`: no command has option {name}"
        for w in words[2:]
        if w.startswith("--") and (name := w.split("=", 1)[0].rstrip(",")) not in known
    ]


def shell_problems(code: str) -> list[str]:
    """Every `pgtasks ...` command of a shell block, checked against the CLI."""
    problems: list[str] = []
    for command in _commands(code):
        problems += check_cli_args(command)
    return problems


def _commands(code: str) -> Iterator[list[str]]:
    text = re.sub(r"\\\n", " ", code)
    for line in text.splitlines():
        line = line.strip().removeprefix("$ ")
        # Command substitutions are commands too: check them, then stand in a word.
        while m := re.search(r"\$\(([^()]*)\)", line):
            yield from _commands(m.group(1))
            line = line[: m.start()] + "SUBST" + line[m.end() :]
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            tokens = list(lexer)
        except ValueError:  # an unbalanced quote: not shell we can read
            continue
        segment: list[str] = []
        for tok in [*tokens, ";"]:
            if tok in _OPERATORS:
                args = _pgtasks_args(segment)
                if args is not None:
                    yield args
                segment = []
            else:
                segment.append(tok)


def _pgtasks_args(segment: list[str]) -> list[str] | None:
    i = 0
    while i < len(segment) and (
        re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", segment[i]) or segment[i] in _WRAPPERS
    ):
        i += 1
    if i < len(segment) and segment[i].rsplit("/", 1)[-1] == "pgtasks":
        return segment[i + 1 :]
    return None


# -- the documents ------------------------------------------------------------------------


def _doc_blocks() -> Iterator[Block]:
    for path in DOCS:
        text = path.read_text()
        rel = path.relative_to(ROOT).as_posix()
        yield from blocks(text, rel)
        yield from command_lines(text, rel)


def test_python_blocks_compile_and_name_real_pgtasks_objects():
    found = [b for b in _doc_blocks() if b.lang in ("python", "py")]
    assert len(found) > 10  # the examples are there to be checked
    problems = [f"{b.path}:{b.line}: {p}" for b in found for p in python_problems(b.code)]
    assert not problems, "\n".join(problems)


def test_shell_commands_are_real_subcommands_and_options():
    found = list(_doc_blocks())
    problems: list[str] = []
    for b in found:
        if b.lang in SHELL_LANGS:
            problems += [f"{b.path}:{b.line}: {p}" for p in shell_problems(b.code)]
        elif b.lang == "command":
            plain = not re.search(r"[\[\]|]", b.code.split("#", 1)[0])
            found_problems = shell_problems(b.code) if plain else check_cli_summary(b.code)
            problems += [f"{b.path}:{b.line}: {p}" for p in found_problems]
    assert sum(b.lang == "command" for b in found) > 10
    assert not problems, "\n".join(problems)


# -- the checks catch what they are for --------------------------------------------------


def test_python_check_catches_made_up_names():
    assert python_problems("from pgtasks import Client, task_register\n") == []
    assert python_problems("import pgtasks\npgtasks.SyncClient\nclient.submit\nctx.step\n") == []
    assert python_problems("wf = await client.submit(chain())\n") == []
    assert python_problems("from pgtasks import NoSuchThing\n")
    assert python_problems("from pgtasks.nosuch import x\n")
    assert python_problems("import pgtasks\npgtasks.fastapi.no_such_helper()\n")
    assert python_problems("from pgtasks import Client\nClient.no_such_method\n")
    assert python_problems("await client.submitt('x')\n")
    assert python_problems("ctx.progres(1)\n")
    assert python_problems("def broken(:\n")


def test_shell_check_catches_made_up_commands_and_options():
    good = (
        "pgtasks worker --app myapp --queues a,b --burst\n"
        'DATABASE_URL="$(.venv/bin/pgtasks db url)" node worker.js\n'
        "pgtasks --database-url postgresql://x/y schedules add n t --cron '0 6 * * *'\n"
        "pgtasks logs 42 -f | head\n"
    )
    assert shell_problems(good) == []
    assert shell_problems("pgtasks frobnicate\n")
    assert shell_problems("pgtasks worker --no-such-option\n")
    assert shell_problems('X="$(pgtasks db urll)"\n')
    assert shell_problems("pgtasks status 1 2\n")  # one argument too many
    assert shell_problems(".venv/bin/pgtasks queues sett q\n")
    assert check_cli_summary("pgtasks queues [pause Q | set Q [--max-running N]]") == []
    assert check_cli_summary("pgtasks queues [set Q [--max-runing N]]")
    assert check_cli_summary("pgtasks frob [--x]")


# -- the site -----------------------------------------------------------------------------


def _mkdocs(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=config.parent, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def _need_mkdocs() -> None:
    for module in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python", "griffe_sphinx"):
        if importlib.util.find_spec(module.split(".")[0]) is None:
            pytest.skip(f"{module} is not installed (pip install -e '.[docs]')")


def test_docs_build_strict(tmp_path):
    _need_mkdocs()
    r = _mkdocs(ROOT / "mkdocs.yml", tmp_path / "site")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "site" / "reference" / "tasks.html").exists()
    tasks = (tmp_path / "site" / "reference" / "tasks.html").read_text()
    assert "backoff_base" in tasks and "Base of the exponential backoff" in tasks
    home = (tmp_path / "site" / "index.html").read_text()
    assert 'href="sql-api.html"' in home  # README's docs/ links work in the site


_FAKE_CONFIG = """
site_name: fake
strict: true
extra:
  api_public_modules: [fakepkg]
hooks:
  - {hooks}
plugins:
  - mkdocstrings:
      handlers:
        python:
          paths: [.]
          options:
            extensions: [griffe_sphinx]
            show_if_no_docstring: false
"""


def _fake_site(tmp_path: Path, module: str, page: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "docs").mkdir(exist_ok=True)
    (tmp_path / "docs" / "index.md").write_text(page)
    (tmp_path / "fakepkg").mkdir(exist_ok=True)
    (tmp_path / "fakepkg" / "__init__.py").write_text(module)
    hooks = ROOT / "docs" / "reference" / "_hooks.py"
    (tmp_path / "mkdocs.yml").write_text(_FAKE_CONFIG.format(hooks=hooks))
    return _mkdocs(tmp_path / "mkdocs.yml", tmp_path / "site")


DOCUMENTED = '''"""A package."""

__all__ = ["Thing", "helper"]


class Thing:
    """A thing."""

    #: How big.
    size: int = 1

    def grow(self) -> None:
        """Grow."""


def helper() -> None:
    """Help."""
'''


def test_a_public_name_without_a_docstring_fails_the_build(tmp_path):
    _need_mkdocs()
    page = "# API\n\n::: fakepkg.Thing\n\n::: fakepkg.helper\n"
    ok = _fake_site(tmp_path, DOCUMENTED, page)
    assert ok.returncode == 0, ok.stdout + ok.stderr  # the control: documented, it builds
    for broken, expected in [
        (DOCUMENTED.replace('        """Grow."""\n', "        pass\n"), "Thing.grow"),
        (DOCUMENTED.replace("    #: How big.\n", ""), "Thing.size"),
        (DOCUMENTED.replace('    """Help."""\n', "    pass\n"), "helper"),
    ]:
        r = _fake_site(tmp_path, broken, page)
        assert r.returncode != 0 and f"{expected} (" in r.stderr, r.stderr
        assert "has no docstring" in r.stderr
    # An exported name that no page renders fails too.
    r = _fake_site(tmp_path, DOCUMENTED, "# API\n\n::: fakepkg.Thing\n")
    assert r.returncode != 0 and "fakepkg.helper is exported" in r.stderr, r.stderr
    # And so does a directive that names nothing.
    r = _fake_site(tmp_path, DOCUMENTED, page + "\n::: fakepkg.Nothing\n")
    assert r.returncode != 0, r.stderr
