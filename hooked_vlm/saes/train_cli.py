"""``hooked-vlm train-sae``: train a SAELens SAE at a hook point on chosen roles of (image, prompt) examples.

    hooked-vlm train-sae --model toy-llava --hook hook_embed --span image --toy-scenes 3000 --out sae/
    hooked-vlm train-sae --model llava-hf/llava-1.5-7b-hf --hook blocks.12.hook_resid_post --span image \
        --images photos/ --prompt "USER: <image>\\nDescribe the image. ASSISTANT:" --write-activations acts/ --out sae/
    hooked-vlm train-sae --model M --hook H --activations acts/ --out sae/      # train from written activations
    hooked-vlm train-sae --model M --hook H --span image --images photos/ --prompt P --write-activations acts/ --write-only

The parser lives in :func:`add_parser` (hooked_vlm/cli.py calls it); :func:`run` does the work.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")


def add_parser(sub: Any, dtypes: list[str], default_device: str | None) -> argparse.ArgumentParser:
    p = sub.add_parser("train-sae", help="train a SAELens SAE on a hook's activations at chosen spans (needs sae-lens)")
    p.add_argument("--model", required=True, help="hub id, local checkpoint folder or shipped toy")
    p.add_argument("--hook", required=True, help="hook point, e.g. hook_embed or blocks.3.hook_resid_post")
    p.add_argument("--span", action="append", help="roles to keep (repeat: --span image --span text); default image")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--images", help="a folder of images; every image is asked --prompt")
    data.add_argument("--toy-scenes", type=int, help="N synthetic toy scenes (hooked_vlm.toy.data), for the toy models")
    data.add_argument("--activations", help="a folder written by --write-activations: train from it, no model run")
    p.add_argument("--prompt", help="the prompt for every image (must hold the model's image placeholder); "
                                    "with --toy-scenes the default is the toy's caption question")
    p.add_argument("--scene-seed", type=int, default=0, help="seed of the toy scenes (default 0)")
    p.add_argument("--write-activations", metavar="DIR", help="write the activations here (sharded safetensors + "
                                                               "parquet index) and train from the folder")
    p.add_argument("--write-only", action="store_true", help="only write the activations (needs --write-activations)")
    p.add_argument("--shard-rows", type=int, default=1 << 16)
    p.add_argument("--hook-out", help="train a skip transcoder from --hook to this hook (e.g. --hook blocks.3.ln2."
                   "hook_normalized --hook-out blocks.3.hook_mlp_out; ReLU + --l1, hooked_vlm.saes.transcoder_train)")
    p.add_argument("--out", help="output folder of the SAE (SAELens format)")
    p.add_argument("--architecture", default="standard", help="a SAELens training architecture (standard, topk, "
                                                              "batchtopk, jumprelu, gated, ...)")
    p.add_argument("--d-sae", type=int, default=0, help="number of features (default 8 x the activation width)")
    p.add_argument("--l1", type=float, default=None, help="l1_coefficient (standard / gated)")
    p.add_argument("--k", type=int, default=None, help="k (topk / batchtopk)")
    p.add_argument("--sae-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="any other SAELens config field, VALUE as JSON (e.g. decoder_init_norm=0.1)")
    p.add_argument("--samples", type=int, default=1_000_000, help="total training samples (activation rows)")
    p.add_argument("--batch", type=int, default=4096, help="SAE training batch (rows)")
    p.add_argument("--buffer", type=int, default=None, help="shuffle buffer (rows; default 16 x --batch)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--lr-warm-up-steps", type=int, default=0)
    p.add_argument("--lr-decay-steps", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="seed of the SAE's initialisation and of the shuffle")
    p.add_argument("--model-batch", type=int, default=8, help="examples per model forward")
    p.add_argument("--in-memory", action="store_true", help="keep the first pass's activations in memory and replay them")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--dtype", default="float32", choices=dtypes)
    p.add_argument("--device", default=default_device, help="default: cuda when available, else cpu")
    return p


def _dataset(args: argparse.Namespace, model: Any) -> list:
    if args.toy_scenes is not None:
        from hooked_vlm.toy.data import make_scenes, prompt

        if args.toy_scenes < 1:
            raise SystemExit("--toy-scenes must be >= 1")
        text = args.prompt or prompt("caption")
        return [(s.pil(), text) for s in make_scenes(args.toy_scenes, args.scene_seed)]
    from PIL import Image

    folder = Path(args.images)
    if not folder.is_dir():
        raise SystemExit(f"--images {folder} is not a folder")
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"--images {folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    if not args.prompt:
        raise SystemExit("--images needs --prompt (the question asked about every image, with the image placeholder)")
    token = getattr(model.processor, "image_token", None) or "<image>"
    if token not in args.prompt:
        raise SystemExit(f"--prompt has no image placeholder {token!r}: {args.prompt!r}")
    return [(Image.open(f).convert("RGB"), args.prompt) for f in files]


def _sae_kwargs(args: argparse.Namespace) -> dict:
    kwargs: dict[str, Any] = {}
    if args.l1 is not None:
        kwargs["l1_coefficient"] = args.l1
    if args.k is not None:
        kwargs["k"] = args.k
    for item in args.sae_arg:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--sae-arg wants KEY=VALUE, got {item!r}")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return kwargs


def run(args: argparse.Namespace, load_model: Any) -> int:
    import torch

    from .shards import DiskActivationStore, write_activations
    from .store import VLMActivationStore

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.write_only and not args.write_activations:
        raise SystemExit("--write-only needs --write-activations DIR")
    if not args.write_only and not args.out:
        raise SystemExit("give --out DIR for the SAE (or --write-only to only write activations)")
    if args.hook_out:
        return _run_transcoder(args, load_model)
    if args.activations and args.span:
        raise SystemExit("--span comes from the activations folder with --activations; drop --span")
    spans = args.span or ["image"]
    store_kw = dict(train_batch_size=args.batch, buffer_size=args.buffer, seed=args.seed, device=args.device)
    if not args.write_only:  # fail on a missing sae-lens or a bad architecture before running the model
        from .train import architectures

        if args.architecture not in architectures():
            raise SystemExit(f"unknown --architecture {args.architecture!r}; SAELens trains: {', '.join(architectures())}")
    if args.activations:
        store = DiskActivationStore(args.activations, **store_kw)
        if store.hook_name != args.hook:
            raise SystemExit(f"{args.activations} holds activations of {store.hook_name!r}, not --hook {args.hook!r}")
    else:
        model = load_model(args)
        dataset = _dataset(args, model)
        if args.write_activations:
            path = write_activations(model, dataset, args.hook, args.write_activations, spans, args.model_batch,
                                     args.shard_rows, model_name=args.model)
            print(f"wrote activations of {args.hook} at {spans} to {path}", file=sys.stderr)
            if args.write_only:
                return 0
            store = DiskActivationStore(path, **store_kw)
        else:
            store = VLMActivationStore(model, dataset, args.hook, spans, args.model_batch,
                                       cache_in_memory=args.in_memory, **store_kw)
    from .train import train_sae

    d_sae = args.d_sae or 8 * store.d_in
    metadata = dict(model_name=args.model, dataset_path=args.activations or args.images or
                    f"toy scenes n={args.toy_scenes} seed={args.scene_seed}")
    sae, trainer = train_sae(store, d_sae, args.samples, args.architecture, lr=args.lr, seed=args.seed,
                             device=args.device, out=args.out, lr_warm_up_steps=args.lr_warm_up_steps,
                             lr_decay_steps=args.lr_decay_steps, metadata=metadata, **_sae_kwargs(args))
    print(f"trained a {args.architecture} SAE ({store.d_in} -> {d_sae}) for {trainer.n_training_steps} steps on "
          f"{trainer.n_training_samples} rows of {args.hook} at {list(store.spans)}; saved to {args.out}")
    return 0


def _run_transcoder(args: argparse.Namespace, load_model: Any) -> int:
    """``--hook-out``: a skip transcoder on (``--hook``, ``--hook-out``) pairs, streamed from the model."""
    if args.activations or args.write_activations or args.write_only:
        raise SystemExit("--hook-out streams (input, output) pairs from the model: drop --activations / "
                         "--write-activations / --write-only")
    if args.architecture != "standard":
        raise SystemExit("--hook-out trains ReLU skip transcoders (SAELens's standard training SAE + W_skip); "
                         "drop --architecture")
    if not args.out:
        raise SystemExit("give --out DIR for the transcoder")
    from .transcoder_train import VLMPairStore, train_transcoder

    model = load_model(args)
    store = VLMPairStore(model, _dataset(args, model), args.hook, args.hook_out, args.span or ["all"],
                         model_batch_size=args.model_batch, cache_in_memory=args.in_memory, train_batch_size=args.batch,
                         buffer_size=args.buffer, seed=args.seed, device=args.device)
    d_sae = args.d_sae or 8 * store.d_in
    tc, trainer = train_transcoder(store, d_sae, args.samples, l1_coefficient=1.0 if args.l1 is None else args.l1,
                                   lr=args.lr, seed=args.seed, device=args.device, out=args.out,
                                   lr_warm_up_steps=args.lr_warm_up_steps, metadata=dict(model_name=args.model))
    print(f"trained a skip transcoder ({args.hook} -> {args.hook_out}, {store.d_in} -> {d_sae}) for "
          f"{trainer.n_training_steps} steps; saved to {args.out}")
    return 0
