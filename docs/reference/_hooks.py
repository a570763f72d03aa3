"""MkDocs hooks for the pgtasks site (mkdocs.yml lists this file under `hooks`).

Three jobs, each a warning when it finds something wrong, so `mkdocs build --strict`
(`make docs`) fails on it:

* The home page is README.md, read at build time, so the repository's front page and the
  site's are one text. Its `docs/x.md` links become `x.md`.
* A link that leaves docs/ (`../examples/demo.py`, README's `examples/node`) cannot work in
  the built site: it is shown as the repository path it names, and a path that does not
  exist in the repository is a warning.
* Every object an API page renders (`::: pgtasks.Client`) and each public member under it
  needs a docstring, and every name in a public module's `__all__` must be rendered on
  some page. mkdocstrings only hides an undocumented name (`show_if_no_docstring: false`);
  this check makes it an error. Exempt: attributes assigned inside a method (`self.x =` in
  `__init__`: the constructor's docstring describes them; a `#:` comment documents one
  where it should show), a member that overrides a documented one of a base class, and
  pydantic's `model_config`.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("mkdocs.hooks.pgtasks")

#: Bases whose subclasses hold data: see _is_record.
RECORD_BASES = frozenset(
    {
        "pydantic.BaseModel",
        "pydantic_settings.BaseSettings",
        "typing.TypedDict",
        "typing.NamedTuple",
        "enum.Enum",
        "enum.IntEnum",
        "enum.StrEnum",
    }
)
#: Members never required to have a docstring (framework configuration, not API).
EXEMPT_NAMES = frozenset({"model_config"})

_DIRECTIVE = re.compile(r"^::: ([\w.]+)[ \t]*\n((?:[ \t]+.*\n|[ \t]*\n)*)", re.MULTILINE)
# An inline code span (left alone), or a link [text](target) / image ![alt](target).
_TOKEN = re.compile(
    r"(?P<code>(?P<ticks>`+).*?(?P=ticks))"
    r"|(?P<bang>!?)\[(?P<text>[^\]\n]*)\]\((?P<target>[^)\s]+)\)"
)
_FENCE = re.compile(r"^(```|~~~)")


@dataclass
class Directive:
    """One `::: identifier` block of a reference page, with its YAML options."""

    identifier: str
    options: dict[str, Any] = field(default_factory=dict)
    page: str = ""


_directives: list[Directive] = []
_generated: set[str] = set()  # pages made from a file outside docs/ (README.md)


# -- MkDocs events ------------------------------------------------------------------------


def on_pre_build(config: Any) -> None:
    _directives.clear()
    _generated.clear()


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    readme = Path(config["config_file_path"]).parent / "README.md"
    if files.get_file_from_path("index.md") is None and readme.exists():
        files.append(File.generated(config, "index.md", content=readme.read_text()))
        _generated.add("index.md")
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    src = page.file.src_uri
    root = Path(config["config_file_path"]).parent
    docs_dir = Path(config["docs_dir"])
    for m in _DIRECTIVE.finditer(markdown):
        options = yaml.safe_load(_dedent(m.group(2))) or {}
        _directives.append(Directive(m.group(1), dict(options.get("options") or {}), src))
    # The home page is README.md, whose links are relative to the repository's root.
    here = root if src in _generated else (docs_dir / src).parent
    return rewrite_links(markdown, here=here, root=root, docs_dir=docs_dir, page=src)


def on_post_build(config: Any) -> None:
    root = str(Path(config["config_file_path"]).parent)
    # The griffe extensions mkdocstrings renders with, so both see the same docstrings.
    handler = config["plugins"]["mkdocstrings"].config["handlers"].get("python", {})
    extensions = list(handler.get("options", {}).get("extensions", []))
    # Modules whose `__all__` is the public API: each exported name must be rendered.
    public = list(config["extra"].get("api_public_modules", []))
    paths = [root, *sys.path]
    for problem in check_api(_directives, paths, extensions=extensions, public_modules=public):
        log.warning(problem)


# -- links --------------------------------------------------------------------------------


def rewrite_links(markdown: str, *, here: Path, root: Path, docs_dir: Path, page: str) -> str:
    """Links into docs/ stay links (made relative to `page`); links elsewhere in the
    repository become `path` text; a repository path that does not exist is a warning.
    Code (fenced, indented or inline) is left alone."""
    out: list[str] = []
    fence: str | None = None
    for line in markdown.splitlines(keepends=True):
        m = _FENCE.match(line.lstrip())
        if m:
            fence = None if fence == m.group(1) else fence or m.group(1)
            out.append(line)
            continue
        if fence or line.startswith(("    ", "\t")):
            out.append(line)
            continue
        out.append(_TOKEN.sub(lambda t: _link(t, here, root, docs_dir, page), line))
    return "".join(out)


def _link(m: re.Match[str], here: Path, root: Path, docs_dir: Path, page: str) -> str:
    if m.group("code"):
        return m.group(0)
    bang, text, target = m.group("bang"), m.group("text"), m.group("target")
    if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
        return m.group(0)
    path, _, anchor = target.partition("#")
    resolved = (here / path).resolve()
    docs = docs_dir.resolve()
    if resolved.is_relative_to(docs):
        own_dir = (docs / page).parent
        new = Path(os.path.relpath(resolved, own_dir)).as_posix()
        return f"{bang}[{text}]({new}{'#' + anchor if anchor else ''})"
    try:
        repo_path = resolved.relative_to(root.resolve()).as_posix()
    except ValueError:
        log.warning(f"{page}: link {target!r} points outside the repository")
        return m.group(0)
    if not resolved.exists():
        log.warning(f"{page}: link {target!r}: {repo_path} does not exist in the repository")
    if text.strip("`") == repo_path:
        return f"`{repo_path}`"
    return f"{text} (`{repo_path}` in the repository)"


def _dedent(block: str) -> str:
    lines = [ln for ln in block.splitlines() if ln.strip()]
    if not lines:
        return ""
    indent = min(len(ln) - len(ln.lstrip()) for ln in lines)
    return "\n".join(ln[indent:] for ln in lines)


# -- the API check ------------------------------------------------------------------------


def check_api(
    directives: list[Directive],
    search_paths: list[str],
    *,
    extensions: list[Any],
    public_modules: list[str],
) -> Iterator[str]:
    """What is wrong with the rendered API: broken identifiers, public names without a
    docstring, exported names no page renders."""
    import griffe

    loaded = griffe.load_extensions(*extensions)
    static = griffe.GriffeLoader(search_paths=search_paths, extensions=loaded)
    dynamic = griffe.GriffeLoader(
        search_paths=search_paths, extensions=loaded, force_inspection=True
    )
    rendered: set[str] = set()
    for d in directives:
        loader = dynamic if d.options.get("force_inspection") else static
        try:
            obj = _get(loader, d.identifier)
        except (KeyError, ImportError, griffe.AliasResolutionError) as exc:
            yield f"{d.page}: ::: {d.identifier} names nothing ({type(exc).__name__}: {exc})"
            continue
        rendered.add(d.identifier)
        yield from _check(obj, d.identifier, d, rendered, root=True)
    for module_name in public_modules:
        module = _get(static, module_name)
        for name in sorted(module.exports or ()):
            member = module.members.get(name)
            target = _final(member) if member is not None else None
            paths = {f"{module_name}.{name}"} | ({target.path} if target is not None else set())
            if not paths & rendered:
                yield (
                    f"{module_name}.{name} is exported (__all__) but no reference page renders "
                    f"it: add `::: {module_name}.{name}` to a page in docs/reference/"
                )


def _get(loader: Any, identifier: str) -> Any:
    top = identifier.split(".", 1)[0]
    if top in loader.modules_collection:
        package = loader.modules_collection.get_member(top)
    else:
        package = loader.load(top)
        loader.resolve_aliases(implicit=False, external=False)
    obj = package if identifier == top else package[identifier.split(".", 1)[1]]
    return _final(obj)


def _final(obj: Any) -> Any:
    return obj.final_target if obj.is_alias else obj


def _check(
    obj: Any, shown_as: str, d: Directive, rendered: set[str], *, root: bool = False
) -> Iterator[str]:
    rendered.add(obj.path)
    rendered.add(shown_as)
    if not obj.docstring and not _exempt(obj):
        yield f"{d.page}: {shown_as} ({obj.kind.value}) has no docstring"
    if obj.is_module and not root:
        return  # submodules are not rendered inside their package
    if not (obj.is_module or obj.is_class):
        return
    wanted = d.options.get("members") if root else None
    for name, member in obj.members.items():
        if name.startswith("_") or name in EXEMPT_NAMES:
            continue
        if wanted is not None and wanted is not True and name not in (wanted or ()):
            continue
        if obj.is_module:
            if wanted is None and not member.is_public:
                continue
            if member.is_alias:
                try:
                    member = member.final_target
                except Exception:
                    yield f"{d.page}: {shown_as}.{name} cannot be resolved"
                    continue
            if member.is_module:
                continue
        yield from _check(member, f"{shown_as}.{name}", d, rendered)


def _exempt(obj: Any) -> bool:
    parent = obj.parent
    if obj.name in EXEMPT_NAMES or parent is None or not parent.is_class:
        return False
    if obj.is_attribute and (_is_record(parent) or _in_method(obj, parent)):
        return True
    # An override of a documented member (a subclass's `sqlstate = "PT001"`).
    return any(
        (inherited := base.members.get(obj.name)) is not None and bool(inherited.docstring)
        for base in parent.mro()
    )


def _in_method(attribute: Any, cls: Any) -> bool:
    """Assigned inside a method (`self.x = ...`): state, not a declared attribute."""
    line = attribute.lineno
    return line is not None and any(
        m.is_function and m.lineno is not None and m.endlineno is not None
        and m.lineno <= line <= m.endlineno
        for m in cls.members.values()
    )  # fmt: skip


def _is_record(cls: Any) -> bool:
    """A dataclass, pydantic model, TypedDict or enum: its fields are rendered with their
    types (the page sets show_if_no_docstring for it) and the class docstring says what
    they hold, so a field's own docstring is welcome but not required."""
    for c in [cls, *cls.mro()]:
        if "dataclass" in c.labels:
            return True
        if any(getattr(b, "canonical_path", str(b)) in RECORD_BASES for b in c.bases):
            return True
    return False
