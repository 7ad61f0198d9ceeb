"""The ``hooked-vlm`` command.

    hooked-vlm --version                              the package version
    hooked-vlm demo [--out DIR]                       every analysis on the shipped toy model -> HTML report
    hooked-vlm lens     --model ID --image F --prompt T [--target WORD] [--out FIG.png]
    hooked-vlm ablate   --model ID --image F --prompt T [--span image] [--how zero|mean]
    hooked-vlm knockout --model ID --image F --prompt T [--src image] [--dst text] [--layers 0-7] [--mode mask|zero]
    hooked-vlm patch    --model ID --image F --prompt T --source-image F2 [--span image_last] [--layers 0-3]
    hooked-vlm view     --model ID --image F --prompt T --out VIEW.html [--target WORD]   interactive lens + attention views
    hooked-vlm inspect  MODEL                         will it load, will it fit (json + safetensors headers only)
    hooked-vlm train-sae --model ID --hook H [--span image] (--images DIR --prompt T | --toy-scenes N | --activations DIR)

``--model`` is a hub id, a local checkpoint folder or a shipped toy (``toy-llava``, ``toy-chameleon``, ``toy-chameleon-gen``). The prompt must hold the
model's image placeholder (``<image>`` for LLaVA); if it does not, one is put in front.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import torch

#: --dtype choices; torch is imported only by a command that runs (``--help`` / ``--version`` stay fast)
DTYPES = ("float32", "float16", "bfloat16")


def torch_dtype(name: str) -> "torch.dtype":
    """'float32' / 'float16' / 'bfloat16' -> the torch dtype."""
    import torch

    return getattr(torch, name)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def parse_layers(text: str | None, n_layers: int) -> list[int] | None:
    """'3' / '0-7' / '1,4,9' / '4-' (layer 4 to the end) / '-2' (the second last) -> layers; None -> all."""
    if not text:
        return None
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        head, sep, tail = part[1:].partition("-")
        head = part[0] + head
        if not sep:
            out.append(int(part))
        else:
            out += list(range(int(head), int(tail) + 1 if tail else n_layers))
    out = [l + n_layers if l < 0 else l for l in out]
    bad = [l for l in out if not 0 <= l < n_layers]
    if bad:
        raise SystemExit(f"layers {bad} out of range 0..{n_layers - 1}")
    return out


def _load(args: argparse.Namespace) -> Any:
    from hooked_vlm import HookedVLM

    return HookedVLM.from_pretrained(args.model, dtype=torch_dtype(args.dtype), device=args.device or default_device())


def _inputs(model: Any, image_path: str, text: str) -> dict:
    from PIL import Image

    token = getattr(model.processor, "image_token", None) or "<image>"
    if token not in text:
        print(f"note: the prompt has no {token}; putting one in front", file=sys.stderr)
        text = f"{token}\n{text}"
    return model.prepare_inputs(images=Image.open(image_path).convert("RGB"), text=text)


def _top(model: Any, logits: "torch.Tensor", k: int = 5) -> str:
    probs = logits[0, -1].float().softmax(-1)
    p, ids = probs.topk(k)
    toks = model.tokenizer.convert_ids_to_tokens(ids.tolist())
    return "  ".join(f"{t!r} {v:.3f}" for t, v in zip(toks, p.tolist()))


def cmd_inspect(args: argparse.Namespace) -> int:
    from hooked_vlm.inspect import inspect_checkpoint

    max_memory = None
    if args.max_memory is not None:
        from hooked_vlm.devices import parse_max_memory

        try:
            max_memory = parse_max_memory(args.max_memory)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    report = inspect_checkpoint(args.model, revision=args.revision, max_memory=max_memory, offload=args.offload,
                                dtype=torch_dtype(args.dtype))
    print(report.format())
    if not report.loadable:
        print(f"error: {args.model} would not load: {report.problems[0]}", file=sys.stderr)
        return 1
    if max_memory is not None and report.device_map is None:
        print(f"error: {args.model} {report.device_map_lines[-1]}", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> None:
    from hooked_vlm.demo import run_demo

    run_demo(args.out, n=args.n)


def cmd_lens(args: argparse.Namespace) -> None:
    from hooked_vlm.analysis import logit_lens

    model = _load(args)
    inputs = _inputs(model, args.image, args.prompt)
    targets = [args.target] if args.target else None
    lens = logit_lens(model, inputs, span=args.span, targets=targets, top_k=args.top_k,
                      layers=parse_layers(args.layers, model.cfg.n_layers + 1))
    tok = model.tokenizer
    for li, layer in enumerate(lens.layers):  # the most frequent top-1 token over the span, per layer
        ids, counts = lens.top_ids[li, :, 0].unique(return_counts=True)
        order = counts.argsort(descending=True)[:args.top_k]
        common = ", ".join(f"{tok.convert_ids_to_tokens(int(ids[i]))!r} x{int(counts[i])}" for i in order)
        extra = ""
        if targets:
            extra = f" | p({args.target}) max {float(lens.target_probs[li, :, 0].max()):.3f}"
        print(f"layer {layer:3d}: {common}{extra}")
    if args.out:
        from PIL import Image

        what = "target_prob" if targets else "top_prob"
        fig = lens.plot(image=Image.open(args.image).convert("RGB"), what=what)
        fig.savefig(args.out, dpi=110, bbox_inches="tight")
        print(f"wrote {args.out}")


def cmd_ablate(args: argparse.Namespace) -> None:
    from hooked_vlm.analysis import forward_with_hooks, span_activations, span_ablation

    model = _load(args)
    inputs = _inputs(model, args.image, args.prompt)
    value = None
    if args.how == "mean":  # the mean of the span's own activations (give a dataset mean in code for Neo et al.)
        value = span_activations(model, inputs, args.span, args.hook).float().mean((0, 1))
    clean = forward_with_hooks(model, inputs)
    ablated = span_ablation(model, inputs, span=args.span, how=args.how, value=value, hook_name=args.hook)
    print(f"clean:   {_top(model, clean)}")
    print(f"ablated: {_top(model, ablated)}  ({args.how} ablation of '{args.span}' at {args.hook})")


def cmd_knockout(args: argparse.Namespace) -> None:
    from hooked_vlm.analysis import forward_with_hooks, knockout_hooks

    model = _load(args)
    inputs = _inputs(model, args.image, args.prompt)
    layers = parse_layers(args.layers, model.cfg.n_layers)
    hooks = knockout_hooks(model, src=args.src, dst=args.dst, layers=layers, mode=args.mode)
    print(f"clean:       {_top(model, forward_with_hooks(model, inputs))}")
    print(f"knocked out: {_top(model, forward_with_hooks(model, inputs, hooks))}  ({args.src} -> {args.dst}, {args.mode})")
    if args.max_new_tokens:
        print(f"clean generation:       {model.generate(**inputs, max_new_tokens=args.max_new_tokens)}")
        print(f"knocked-out generation: {model.generate(**inputs, max_new_tokens=args.max_new_tokens, fwd_hooks=hooks)}")


def cmd_patch(args: argparse.Namespace) -> None:
    from hooked_vlm.analysis import activation_patching, forward_with_hooks

    model = _load(args)
    target = _inputs(model, args.image, args.prompt)
    source = _inputs(model, args.source_image, args.prompt)
    layers = parse_layers(args.layers, model.cfg.n_layers)
    patched = activation_patching(model, target, source, span=args.span, site=args.site, layers=layers if layers else 0)
    print(f"target: {_top(model, forward_with_hooks(model, target))}")
    print(f"source: {_top(model, forward_with_hooks(model, source))}")
    print(f"patched ({args.span} at {args.site}, layers {layers if layers else [0]}): {_top(model, patched)}")


# --- hooked-vlm view: interactive HTML (hooked_vlm.viz) ---------------------------------------------------------
def cmd_view(args: argparse.Namespace) -> None:
    from PIL import Image

    from hooked_vlm.viz import write_views

    model = _load(args)
    inputs = _inputs(model, args.image, args.prompt)
    lens_path, att_path = write_views(model, inputs, args.out, image=Image.open(args.image).convert("RGB"),
                                      targets=args.target or None, top_k=args.top_k,
                                      layers=parse_layers(args.layers, model.cfg.n_layers + 1))
    for path in (lens_path, att_path):
        print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")


def add_view_parser(sub: Any, common: Any) -> None:
    view = sub.add_parser("view", help="write interactive logit-lens and attention views (self-contained HTML)")
    common(view)
    view.add_argument("--out", required=True, help="the lens view's .html path; the attention view goes beside it "
                                                   "as <name>_attention.html")
    view.add_argument("--target", action="append", help="a single-token word to colour the lens by (repeatable)")
    view.add_argument("--layers", help="lens layers, e.g. 0-8 (default: every layer, 0 = LM input)")
    view.add_argument("--top-k", type=int, default=5)
    view.set_defaults(fn=cmd_view)
# --- end hooked-vlm view ------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="hooked-vlm", description="Hooks, spans and analyses for vision-language models.")
    from hooked_vlm import __version__

    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the main analyses on the shipped toy model and write an HTML report")
    demo.add_argument("--out", default="hooked_vlm_demo", help="output folder (default: ./hooked_vlm_demo)")
    demo.add_argument("--n", type=int, default=200, help="scenes per measurement")
    demo.set_defaults(fn=cmd_demo)

    ins = sub.add_parser("inspect", help="check that a checkpoint loads and what memory it needs, without its weights")
    ins.add_argument("model", help="hub id, local checkpoint folder or shipped toy")
    ins.add_argument("--revision", help="hub revision (branch, tag or commit)")
    ins.add_argument("--max-memory", help="plan a device map for this memory, e.g. cuda:0=20GiB,cuda:1=20GiB,cpu=64GiB")
    ins.add_argument("--offload", help="with --max-memory: 'cpu' (the rest in CPU RAM) or a folder (the rest on disk)")
    ins.add_argument("--dtype", default="bfloat16", choices=DTYPES, help="with --max-memory: the load dtype")
    ins.set_defaults(fn=cmd_inspect)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, help="hub id, local checkpoint folder, or a shipped toy (toy-llava, toy-chameleon, toy-chameleon-gen)")
        p.add_argument("--image", required=True)
        p.add_argument("--prompt", required=True)
        p.add_argument("--dtype", default="float32", choices=DTYPES)
        p.add_argument("--device", default=None, help="default: cuda when available, else cpu")

    lens = sub.add_parser("lens", help="logit lens over the image tokens")
    common(lens)
    lens.add_argument("--target", help="a single-token word whose probability to report / plot")
    lens.add_argument("--span", default="image")
    lens.add_argument("--layers", help="e.g. 0-8 or 4,8,12 (default: every layer)")
    lens.add_argument("--top-k", type=int, default=5)
    lens.add_argument("--out", help="write the per-layer grid figure here (PNG)")
    lens.set_defaults(fn=cmd_lens)

    abl = sub.add_parser("ablate", help="ablate a span and compare next-token predictions")
    common(abl)
    abl.add_argument("--span", default="image")
    abl.add_argument("--how", default="zero", choices=["zero", "mean"])
    abl.add_argument("--hook", default="hook_embed", help="hook point to ablate at (default: the LM input)")
    abl.set_defaults(fn=cmd_ablate)

    ko = sub.add_parser("knockout", help="block attention from one span to another")
    common(ko)
    ko.add_argument("--src", default="image", help="span whose keys are blocked (e.g. image, eoi, image_last)")
    ko.add_argument("--dst", default="text", help="span whose queries are blocked (e.g. text, last)")
    ko.add_argument("--layers", help="e.g. 0-7 (default: every layer)")
    ko.add_argument("--mode", default="mask", choices=["mask", "zero"])
    ko.add_argument("--max-new-tokens", type=int, default=0, help="also generate with and without the knockout")
    ko.set_defaults(fn=cmd_knockout)

    pa = sub.add_parser("patch", help="patch a span's activations from a source image's run")
    common(pa)
    pa.add_argument("--source-image", required=True)
    pa.add_argument("--span", default="image_last", help="e.g. eoi (native models), image_last, image")
    pa.add_argument("--site", default="resid_pre")
    pa.add_argument("--layers", help="e.g. 0, or 4- for layer 4 to the end (default: 0)")
    pa.set_defaults(fn=cmd_patch)
    add_view_parser(sub, common)

    # ---- train-sae: a SAELens SAE on a hook's activations at chosen spans (hooked_vlm/saes/train_cli.py)
    from hooked_vlm.saes.train_cli import add_parser as add_train_sae_parser

    tsae = add_train_sae_parser(sub, list(DTYPES), None)
    tsae.set_defaults(fn=cmd_train_sae)
    return ap


def cmd_train_sae(args: argparse.Namespace) -> int:
    from hooked_vlm.saes.train_cli import run

    return run(args, _load)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args) or 0


if __name__ == "__main__":
    sys.exit(main())
