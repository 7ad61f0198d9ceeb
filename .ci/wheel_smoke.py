"""Checks for `make test-wheel` (the package as users install it).

    python wheel_smoke.py contents dist/hooked_vlm-X-py3-none-any.whl dist/hooked_vlm-X.tar.gz
        both archives carry the converters package, the toy checkpoints the demo needs, the demo package and the
        views' JS/CSS; neither carries the research experiments (experiments/ stays in the repository)
    python wheel_smoke.py installed DEMO_OUT
        run with a fresh venv's python, from a directory outside the checkout: hooked_vlm and converters
        import from that venv's site-packages, `hooked-vlm --version` prints the installed version,
        `hooked-vlm demo` writes its report, and toy-llava / toy-chameleon load, run and cache
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                    "processor_config.json", "generation_config.json")
TOYS = ("toy-llava", "toy-chameleon", "toy-chameleon-gen")
VIEW_ASSETS = ("view.css", "common.js", "lens.js", "attention.js", "patching.js", "flow.js", "predictions.js")


def required_members(prefix: str) -> list[str]:
    need = [f"{prefix}converters/__init__.py", f"{prefix}hooked_vlm/__init__.py", f"{prefix}hooked_vlm/cli.py",
            f"{prefix}hooked_vlm/demo/__init__.py", f"{prefix}hooked_vlm/demo/report.py"]
    need += [f"{prefix}hooked_vlm/toy/checkpoints/{t}/{f}" for t in TOYS for f in CHECKPOINT_FILES]
    need += [f"{prefix}hooked_vlm/viz/assets/{a}" for a in VIEW_ASSETS]  # the views' inline JS/CSS
    return need


def check_contents(wheel: Path, sdist: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [m for m in required_members("") if m not in names]
    converters = [n for n in names if n.startswith("converters/") and n.endswith(".py")]
    if missing or len(converters) < 5:
        sys.exit(f"{wheel.name} lacks {missing or 'the converter modules'}: check packages= / package_data= in setup.py")
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        snames = set(tar.getnames())
    missing = [m for m in required_members(f"{top}/") if m not in snames]
    if missing:
        sys.exit(f"{sdist.name} lacks {missing}: check package_data= in setup.py")
    stray = sorted(n for n in names | snames if n.split("/")[0] == "experiments" or n.startswith(f"{top}/experiments/"))
    if stray:
        sys.exit(f"the research experiments are not part of the package, but the archives carry {stray[:5]}: "
                 "check packages= in setup.py and MANIFEST.in")
    print(f"{wheel.name}: {len(names)} files, {len(converters)} converter modules, toy checkpoints {', '.join(TOYS)}; "
          f"{sdist.name}: {len(snames)} entries")


def check_installed(demo_out: Path) -> None:
    import importlib.metadata
    import sysconfig

    import torch

    import converters
    import hooked_vlm
    from hooked_vlm import HookedVLM
    from hooked_vlm.toy.data import make_scenes, prompt

    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    for mod in (hooked_vlm, converters):
        where = Path(mod.__file__).resolve()
        if site not in where.parents:
            sys.exit(f"{mod.__name__} imported from {where}, not from this venv's site-packages {site}")
    version = importlib.metadata.version("hooked_vlm")
    if version != hooked_vlm.__version__:
        sys.exit(f"installed metadata says {version}, hooked_vlm.__version__ says {hooked_vlm.__version__}")
    cli = Path(sys.executable).with_name("hooked-vlm")
    printed = subprocess.run([str(cli), "--version"], check=True, capture_output=True, text=True).stdout.strip()
    if printed != f"hooked-vlm {version}":
        sys.exit(f"`hooked-vlm --version` printed {printed!r}, expected 'hooked-vlm {version}'")
    subprocess.run([str(cli), "demo", "--out", str(demo_out), "--n", "50"], check=True)
    report = demo_out / "report.html"
    pngs = sorted(demo_out.glob("*.png"))
    if not report.is_file() or report.stat().st_size < 1000 or not pngs:
        sys.exit(f"the demo wrote no report / figures in {demo_out}: {sorted(p.name for p in demo_out.iterdir())}")
    for view in ("lens_view.html", "lens_view_attention.html"):  # the interactive views carry the installed assets
        text = (demo_out / view).read_text(encoding="utf-8") if (demo_out / view).is_file() else ""
        if "const HV = " not in text or f'href="{view}"' not in report.read_text(encoding="utf-8"):
            sys.exit(f"the demo's {view} is missing, lacks its inline scripts, or the report does not link it")

    scene = make_scenes(1, 0)[0]
    for toy in TOYS:
        model = HookedVLM.from_pretrained(toy)
        inputs = model.prepare_inputs(images=scene.pil(), text=prompt("colour"))
        with torch.no_grad():
            logits = model(**inputs)
            cached_logits, cache = model.run_with_cache(**inputs)
        name = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
        if name not in model.hook_dict or name not in cache:
            sys.exit(f"{toy}: no hook {name!r}")
        if cache[name].shape[:2] != inputs["input_ids"].shape:
            sys.exit(f"{toy}: {name} has shape {tuple(cache[name].shape)} for input ids {tuple(inputs['input_ids'].shape)}")
        # caching every hook (attention patterns too) runs the explicit attention path, the plain forward the
        # fast (SDPA) one: the same numbers up to float32 rounding (the parity tests' 1e-4 of the logit scale)
        diff, tol = float((logits - cached_logits).abs().max()), 1e-4 * float(logits.abs().max())
        if diff > tol:
            sys.exit(f"{toy}: run_with_cache logits differ from the forward's by {diff:.3g} > {tol:.3g}")
        answer = model.tokenizer.decode([int(logits[0, -1].argmax())]).strip()
        if answer != scene.objects[0].colour:  # both toys answer colour on > 99.8% of held-out scenes
            sys.exit(f"{toy} answers {answer!r} for a {scene.objects[0].colour} shape: wrong or untrained weights shipped")
        print(f"{toy}: forward + run_with_cache ok ({len(cache)} cached hooks, max logit diff {diff:.2g}), answers {answer!r}")
    print(f"hooked_vlm {version} from {Path(hooked_vlm.__file__).parent}; demo report {report}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "contents":
        check_contents(Path(sys.argv[2]), Path(sys.argv[3]))
    elif len(sys.argv) == 3 and sys.argv[1] == "installed":
        check_installed(Path(sys.argv[2]))
    else:
        sys.exit(__doc__)
