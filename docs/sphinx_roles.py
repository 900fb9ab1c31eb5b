"""Griffe extension for the documentation build: Sphinx-like roles in docstrings become cross-references.

The docstrings are Google style with Sphinx roles (``:func:`vesalius.x.y```, ``:class:`~vesalius.x.Y```). Once the
package is loaded, each role whose target is a ``vesalius.`` path becomes an mkdocs-autorefs link (``~`` shows only
the last name). A target that a package does not re-export (``vesalius.pkg.Name`` defined in one of its submodules)
links to that one definition, as Sphinx would find it; a target that names nothing fails ``mkdocs build --strict``.
A role with a short or relative target (``:func:`helper```, ``:mod:`.sampling```) becomes plain code. Loaded by
mkdocstrings (``extensions`` in ``mkdocs.yml``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|data|attr|exc|obj|const):`(~?)([^`]+)`")


def _objects(obj: griffe.Object) -> Iterator[griffe.Object]:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _objects(member)  # type: ignore[arg-type]


def _resolve(target: str, paths: set[str]) -> str:
    """``target`` if it names an object; else the one object of that name defined below its parent package."""
    if target in paths:
        return target
    parent, _, name = target.rpartition(".")
    found = [p for p in paths if p.startswith(parent + ".") and p.endswith("." + name)]
    return found[0] if len(found) == 1 else target  # none or several: left as it is (strict mode reports it)


def convert_roles(text: str, paths: set[str]) -> str:
    """``text`` with every Sphinx-like role replaced by a cross-reference or by plain code."""

    def replace(match: re.Match[str]) -> str:
        short, target = match.group(1) == "~", match.group(2).strip().removesuffix("()")
        if not target.startswith("vesalius."):
            return f"`{target.lstrip('.~')}`"
        title = target.rsplit(".", 1)[-1] if short else target
        return f"[`{title}`][{_resolve(target, paths)}]"

    return _ROLE.sub(replace, text)


class SphinxRoles(griffe.Extension):
    """Rewrite the roles of every docstring of a package once the whole package is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        objects = list(_objects(pkg))
        paths = {o.path for o in objects}
        for obj in objects:
            if obj.docstring is not None:
                obj.docstring.value = convert_roles(obj.docstring.value, paths)
