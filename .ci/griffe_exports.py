"""Griffe extension for the API reference (mkdocs.yml): a package's ``__all__`` wins over a same-named submodule.

``hooked_vlm/analysis/__init__.py`` does ``from .logit_lens import logit_lens``: at run time
``hooked_vlm.analysis.logit_lens`` is the function, but griffe's static tree keeps the submodule under that name, so
the reference would leave the function out. For every name a package exports that griffe holds as a submodule
defining a member of the same name, this puts an alias to that member in the submodule's place, as Python does.
"""

from __future__ import annotations

from typing import Any

import griffe


class ExportsOverSubmodules(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        packages = [pkg]
        while packages:
            package = packages.pop()
            for name in list(package.exports or []):
                member = package.members.get(name)
                if member is not None and not member.is_alias and member.is_module and name in member.members:
                    package.set_member(name, griffe.Alias(name, member.members[name], parent=package))
            packages += [m for m in package.members.values() if not m.is_alias and m.is_module]
