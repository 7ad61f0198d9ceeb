"""Griffe extensions for the API reference (mkdocs.yml, `make docs`). They change what the docs read, never the code.

* ``ExportsOverSubmodules``: a package's ``__all__`` wins over a same-named submodule. ``hooked_vlm/analysis/__init__.py``
  does ``from .logit_lens import logit_lens``: at run time ``hooked_vlm.analysis.logit_lens`` is the function, but
  griffe's static tree keeps the submodule under that name, so the reference would leave the function out. For every
  name a package exports that griffe holds as a submodule defining a member of the same name, this puts an alias to
  that member in the submodule's place, as Python does.
* ``SphinxRoles``: the docstrings use Sphinx roles (``:class:`~hooked_vlm.spans.TokenSpans```); Markdown would show
  them raw. Each becomes inline code of the name (the last part with ``~``, as Sphinx shows it).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|obj|exc|const):`(~?)([^`]+)`")


def _show(match: re.Match) -> str:
    tilde, target = match.groups()
    target = target.lstrip(".")
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def _walk(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


class ExportsOverSubmodules(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for module in [m for m in _walk(pkg) if m.is_module]:
            for name in list(module.exports or []):
                member = module.members.get(name)
                if member is not None and not member.is_alias and member.is_module and name in member.members:
                    module.set_member(name, griffe.Alias(name, member.members[name], parent=module))


class SphinxRoles(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = ROLE.sub(_show, obj.docstring.value)
