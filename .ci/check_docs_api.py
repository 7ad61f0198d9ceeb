"""After ``mkdocs build``: the API reference lists every public name of the four public modules.

    python .ci/check_docs_api.py site/objects.inv

Reads the Sphinx inventory mkdocstrings writes (``site/objects.inv``) and checks that ``MODULE.NAME`` is there, on
the module's API page, for every NAME in ``MODULE.__all__`` (imported, so a name added to ``__all__`` is asked for
without editing anything here). mkdocs.yml leaves out names without a docstring, so an undocumented public name
fails here too. Exits 1 naming what is missing.
"""

from __future__ import annotations

import importlib
import sys
import zlib
from pathlib import Path

# module -> its page under the site (docs/api/*.md)
PAGES = {"hooked_vlm": "api/hooked_vlm/", "hooked_vlm.analysis": "api/analysis/", "hooked_vlm.saes": "api/saes/",
         "hooked_vlm.viz": "api/viz/"}


def read_inventory(path: Path) -> dict[str, str]:
    """name -> page URI (without the #anchor), from a Sphinx v2 inventory: 4 header lines, then zlib."""
    data = path.read_bytes()
    header, sep, body = data.partition(b"# The remainder of this file is compressed using zlib.\n")
    if not sep or not header.startswith(b"# Sphinx inventory version 2"):
        raise ValueError(f"{path} is not a Sphinx v2 inventory (the file mkdocstrings writes as site/objects.inv)")
    entries = {}
    for line in zlib.decompress(body).decode("utf-8").splitlines():
        # name domain:role priority uri dispname; the uri may end in "$" (meaning: the name itself)
        name, _domain, _priority, uri, *_ = line.split(" ", 4)
        entries[name] = uri.split("#", 1)[0]
    return entries


def missing_names(entries: dict[str, str], pages: dict[str, str] = PAGES) -> list[str]:
    missing = []
    for module, page in pages.items():
        names = importlib.import_module(module).__all__
        for name in names:
            uri = entries.get(f"{module}.{name}")
            if uri is None:
                missing.append(f"{module}.{name} (not in the inventory: give it a docstring; undocumented names are left out)")
            elif uri != page:
                missing.append(f"{module}.{name} (on {uri!r}, not on its API page {page!r})")
    return missing


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    entries = read_inventory(Path(argv[0]))
    missing = missing_names(entries)
    counted = sum(len(importlib.import_module(m).__all__) for m in PAGES)
    if missing:
        print(f"the API reference lacks {len(missing)} of {counted} public names:\n  " + "\n  ".join(missing),
              file=sys.stderr)
        return 1
    print(f"API reference: all {counted} public names of {', '.join(PAGES)} are listed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
