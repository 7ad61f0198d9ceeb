"""Start-up time: ``hooked-vlm --help`` / ``--version``, ``import hooked_vlm`` against ``import torch, transformers``.

Each measure is a fresh Python subprocess (``python -c ...``, the interpreter's own start included), timed from
outside; the table gives the median of ``--n`` runs, interleaved (measure A, B, C, A, B, C, ...) so that load
changes on the machine hit all alike. ``--repo`` times another checkout (e.g. the code before a change):
the subprocesses run with that folder first on ``sys.path``.

    python benchmarks/bench_startup.py --n 11
    python benchmarks/bench_startup.py --n 11 --repo /path/to/other/checkout

Targets (issue 23): ``--help`` and ``--version`` <= 0.5 s; ``import hooked_vlm`` no slower than
``import torch, transformers``. ``from hooked_vlm import HookedVLM`` is shown for information: the model class
needs transformer_lens's ``HookedRootModule`` / ``HookPoint``, whose package imports all of transformer_lens.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

MEASURES = {
    "python -c pass (interpreter start)": "pass",
    "hooked-vlm --help": "import sys; sys.argv = ['hooked-vlm', '--help']\n"
                         "from hooked_vlm.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass",
    "hooked-vlm --version": "import sys; sys.argv = ['hooked-vlm', '--version']\n"
                            "from hooked_vlm.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass",
    "import hooked_vlm": "import hooked_vlm",
    "import torch, transformers": "import torch, transformers",
    "from hooked_vlm import HookedVLM": "from hooked_vlm import HookedVLM",
}


def time_once(code: str, repo: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=11, help="runs per measure (median reported)")
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]), help="the checkout to time")
    args = ap.parse_args()
    repo = Path(args.repo).resolve()
    times: dict[str, list[float]] = {name: [] for name in MEASURES}
    for name, code in MEASURES.items():  # one warm-up each (file-system caches)
        time_once(code, repo)
    for _ in range(args.n):
        for name, code in MEASURES.items():
            times[name].append(time_once(code, repo))
    print(f"checkout {repo}, python {sys.version.split()[0]}, median of {args.n} (min - max), "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| measure | median | min - max |\n|---|---|---|")
    for name, ts in times.items():
        print(f"| `{name}` | {statistics.median(ts):.2f} s | {min(ts):.2f} - {max(ts):.2f} s |")


if __name__ == "__main__":
    main()
