"""Griffe extension used only by the documentation build (``mkdocs.yml``): reads the reST/Sphinx-isms of the
``captum_ext`` docstrings as Markdown, without touching the sources.

* ``:class:`~captum_ext.maps.X``` (and ``:func:``, ``:meth:``, ``:mod:``, ``:data:``, ``:attr:``, ``:exc:``,
  ``:obj:``) becomes an *optional* cross-reference: a link when the target is rendered somewhere in the API
  reference, plain code otherwise, never a warning (so ``mkdocs build --strict`` does not depend on it).
  Relative names (``:data:`METHODS```) are resolved in the scope of the docstring's owner.
* ``Example::`` followed by a doctest becomes the Google ``Examples:`` section (highlighted as ``pycon``); any
  other paragraph ending in ``::`` (reST's "literal block follows") loses one colon.
* reST simple tables (``====  ====`` borders) become Markdown tables, or a list when headerless (two columns).
* ``f.__doc__ = f.__doc__.format(name=CONSTANT)`` at module level (shared ``Args:`` blocks) is replayed on the
  statically loaded docstring, as it happens at import time.
"""

from __future__ import annotations

import ast
import html
import inspect
import re
from pathlib import Path
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj):`(?P<tilde>~?)(?P<target>[^`<>\s]+)`")
_EXAMPLE = re.compile(r"^(?P<indent>[ \t]*)Examples?::[ \t]*\n(?:[ \t]*\n)+(?=[ \t]*>>>)", re.MULTILINE)
_LITERAL = re.compile(r"(?<=[^:\s])::[ \t]*$", re.MULTILINE)
_BORDER = re.compile(r"^[ \t]*=+(?:[ \t]+=+)+[ \t]*$")


def _scope_path(obj: griffe.Object, name: str) -> str | None:
    """The path under which ``name`` is visible from ``obj`` (an alias keeps its public path)."""
    scope: griffe.Object | None = obj
    while scope is not None:
        if name in scope.members:
            return scope.members[name].path
        if scope.parent is not None and name == scope.parent.name and not scope.parent.is_module:
            return scope.parent.path
        scope = scope.parent
    return None


def _identifier(obj: griffe.Object, target: str, public: dict[str, str]) -> str | None:
    name = target.removesuffix("()")
    if not name.startswith("captum_ext"):
        first, _, rest = name.partition(".")
        resolved = _scope_path(obj, first)
        if resolved is None:
            return None
        name = f"{resolved}.{rest}" if rest else resolved
    # Prefer the exported path (``captum_ext.evaluation.roar``, the function) over the defining one
    # (``captum_ext.evaluation.roar.roar``, which the function's name shadows in the package).
    head, tail = name, ""
    while head:
        if head in public:
            return public[head] + tail
        head, _, last = head.rpartition(".")
        tail = f".{last}{tail}"
    return name


def _roles(obj: griffe.Object, text: str, public: dict[str, str]) -> str:
    def role(match: re.Match[str]) -> str:
        target = match["target"]
        shown = target.rsplit(".", 1)[-1] if match["tilde"] else target
        code = f"<code>{html.escape(shown)}</code>"
        identifier = _identifier(obj, target, public)
        if identifier is None:
            return code
        return f'<autoref identifier="{html.escape(identifier)}" optional>{code}</autoref>'

    return _ROLE.sub(role, text)


def _cell(text: str) -> str:
    return text.strip().replace("|", "\\|")


def _split_row(line: str, starts: list[int]) -> list[str]:
    """A row's cells by the border's column starts; by runs of 2+ spaces where a cell overflows its column."""
    padded = line.ljust(starts[-1] + 1)
    if any(padded[start - 1] != " " and padded[start] != " " for start in starts[1:]):
        return (re.split(r"\s{2,}", line.strip(), maxsplit=len(starts) - 1) + [""] * len(starts))[: len(starts)]
    bounds = [*starts, len(padded)]
    return [padded[a:b].strip() for a, b in zip(bounds, bounds[1:])]


def _tables(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        if not _BORDER.match(lines[i]):
            out.append(lines[i])
            i += 1
            continue
        end = i + 1  # the closing border: followed by a blank line or the end of the text
        while end < len(lines) and not (
            _BORDER.match(lines[end]) and (end + 1 == len(lines) or not lines[end + 1].strip())
        ):
            end += 1
        if end == len(lines):  # not a table after all
            out.append(lines[i])
            i += 1
            continue
        border = lines[i]
        indent = border[: len(border) - len(border.lstrip())]
        starts = [m.start() - len(indent) for m in re.finditer(r"=+", border)]
        body = [line[len(indent) :] for line in lines[i + 1 : end]]
        header = None
        if len(body) > 1 and _BORDER.match(body[1]):  # border, header line, border
            header = _split_row(body[0], starts)
            body = body[2:]
        rows: list[list[str]] = []
        for line in body:
            if not line.strip() or _BORDER.match(line):
                continue
            cells = _split_row(line, starts)
            if cells[0] or not rows:
                rows.append(cells)
            else:  # a blank first column continues the row above
                rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells)]
        if header is not None:
            out.append(indent + "| " + " | ".join(_cell(c) for c in header) + " |")
            out.append(indent + "|" + " --- |" * len(header))
            out.extend(indent + "| " + " | ".join(_cell(c) for c in row) + " |" for row in rows)
        else:
            out.extend(
                f"{indent}- {row[0]}: {'; '.join(c for c in row[1:] if c)}" if any(row[1:]) else f"{indent}- {row[0]}"
                for row in rows
            )
        i = end + 1
    return "\n".join(out)


def _rewrite(obj: griffe.Object, text: str, public: dict[str, str]) -> str:
    text = _tables(text)
    text = _roles(obj, text, public)
    text = _EXAMPLE.sub(lambda m: f"{m['indent']}Examples:\n", text)
    return _LITERAL.sub(":", text)


def _replay_doc_formats(module: griffe.Module) -> None:
    """Apply ``f.__doc__ = f.__doc__.format(key=CONSTANT)`` statements of ``module`` to the loaded docstrings."""
    if not isinstance(module.filepath, Path) or module.filepath.suffix != ".py":
        return
    tree = ast.parse(module.filepath.read_text(encoding="utf-8"))
    constants = {
        node.targets[0].id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    }
    defs = {node.name: node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        target, call = node.targets[0], node.value
        if not (
            isinstance(target, ast.Attribute)
            and target.attr == "__doc__"
            and isinstance(target.value, ast.Name)
            and isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr == "format"
            and not call.args
            and all(isinstance(kw.value, ast.Name) and kw.value.id in constants for kw in call.keywords)
        ):
            continue
        name = target.value.id
        member = module.members.get(name)
        raw = ast.get_docstring(defs[name], clean=False) if name in defs else None
        if not isinstance(member, griffe.Object) or member.docstring is None or raw is None:
            continue
        kwargs = {kw.arg: constants[kw.value.id] for kw in call.keywords if kw.arg and isinstance(kw.value, ast.Name)}
        try:
            member.docstring.value = inspect.cleandoc(raw.format(**kwargs))
        except (KeyError, IndexError, ValueError):
            continue


class SphinxRoles(griffe.Extension):
    """Rewrites every docstring of the loaded package once it is fully loaded (names resolve then)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[int] = set()
        stack: list[griffe.Object] = [pkg]
        objects: list[griffe.Object] = []
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            objects.append(obj)
            if isinstance(obj, griffe.Module):
                _replay_doc_formats(obj)
            stack.extend(member for member in obj.members.values() if isinstance(member, griffe.Object))
        public: dict[str, str] = {}  # defining path -> shortest path that an ``__all__`` exports it under
        for module in objects:
            if isinstance(module, griffe.Module) and module.exports:
                exports = {str(name) for name in module.exports}
                for member in module.members.values():
                    if isinstance(member, griffe.Alias) and member.name in exports:
                        known = public.get(member.target_path)
                        if known is None or len(member.path) < len(known):
                            public[member.target_path] = member.path
        for obj in objects:
            if obj.docstring is not None:
                obj.docstring.value = _rewrite(obj, obj.docstring.value, public)
