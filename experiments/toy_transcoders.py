"""What the attribution graphs of ``toy-llava-transcoders`` show on held-out toy scenes.

Measurement on held-out scenes (seed 12345), "what colour is the shape ?", the graph's target being the model's
answer logit at the answering position:

* the share of the image patches' influence (circuit-tracer's influence on the target through the graph) that sits
  on the object's patches (ground truth from the scene generator), against the share of patches the object covers;
* the feature with the largest direct effect on ``logit(answer) - logit(runner-up colour)`` (at any layer and
  position), scaled by ``--scale``: the graph's predicted logit difference, and the logit difference in the frozen
  replacement and in the real model (free), whether the answer flips.

    python -m experiments.toy_transcoders [--scenes 100] [--scale -1.0] [--json FILE]   (needs sae-lens)

The transcoders themselves are trained by ``python -m hooked_vlm.toy.transcoders train`` (:mod:`hooked_vlm.toy.transcoders`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hooked_vlm import HookedVLM
from hooked_vlm.analysis.graph import Intervention, TranscoderSet, attribution_graph, feature_intervention
from hooked_vlm.toy.data import COLOURS, make_scenes
from hooked_vlm.toy.sae_features import HELD_OUT_SEED, patch_labels
from hooked_vlm.toy.tasks import ToyEncoder
from hooked_vlm.toy.transcoders import load


@torch.no_grad()
def measure(n_scenes: int = 100, scale: float = -1.0, max_feature_nodes: int = 512, batch_size: int = 64) -> dict:
    model = HookedVLM.from_pretrained("toy-llava")
    ts = TranscoderSet.from_saelens(load())
    enc = ToyEncoder(model.processor)
    length = enc.first_answer_position("colour") + 1
    colour_ids = {c: model.to_single_token(c) for c in COLOURS}
    rows = []
    for scene in tqdm(make_scenes(n_scenes, seed=HELD_OUT_SEED), desc="graphs of held-out scenes"):
        b = enc.batch([scene], ("colour",))
        inputs = dict(input_ids=b["input_ids"][:, :length], attention_mask=b["attention_mask"][:, :length],
                      pixel_values=b["pixel_values"])
        logits = model(**inputs)[0, -1]
        ranked = sorted(COLOURS, key=lambda c: -float(logits[colour_ids[c]]))
        answer, runner = ranked[0], ranked[1]
        g = attribution_graph(model, inputs, ts, target=(colour_ids[answer], colour_ids[runner]),
                              max_feature_nodes=max_feature_nodes, batch_size=batch_size)
        table = g.node_table()
        patches = table[(table.kind == "input") & (table.image == 0)]
        on_object = patch_labels(scene)["colour"] != "background"  # row-major over the grid
        obj = np.array([bool(on_object[r * 6 + c]) for r, c in zip(patches.row, patches.col)])
        infl = patches.influence.to_numpy()
        node = int(torch.argmax(g.adjacency[g.logit_node(0), : g.n_features]))
        layer, pos, feat = g.features[node].tolist()
        edit = [Intervention(layer, pos, feat, scale=scale)]
        predicted = float(g.logit_targets.values[0] + (scale - 1.0) * g.adjacency[g.logit_node(0), node])
        diff = lambda lg: float(lg[-1, colour_ids[answer]] - lg[-1, colour_ids[runner]])  # noqa: E731
        frozen = diff(feature_intervention(model, inputs, ts, edit, mode="frozen")[0])
        free_logits = feature_intervention(model, inputs, ts, edit, mode="free")[0]
        rows.append(dict(answer=answer, correct=answer == scene.answer("colour"), object_share=float(infl[obj].sum() / infl.sum()),
                         object_area=float(obj.mean()), logit_diff=float(g.logit_targets.values[0]), feature_layer=layer,
                         feature_position=pos, feature_on_image=bool(table.image[g.input_node(pos)] >= 0),
                         predicted=predicted, frozen=frozen, free=diff(free_logits),
                         free_answer=max(COLOURS, key=lambda c: float(free_logits[-1, colour_ids[c]]))))
    n = len(rows)
    mean = lambda k: float(np.mean([r[k] for r in rows]))  # noqa: E731
    summary = dict(
        scenes=n, accuracy=mean("correct"), object_share=mean("object_share"), object_area=mean("object_area"),
        object_share_above_area=float(np.mean([r["object_share"] > r["object_area"] for r in rows])),
        scale=scale, predicted_flips=float(np.mean([r["predicted"] < 0 for r in rows])),
        frozen_flips=float(np.mean([r["frozen"] < 0 for r in rows])),
        free_flips=float(np.mean([r["free_answer"] != r["answer"] for r in rows])),
        frozen_matches_prediction=float(np.mean([abs(r["frozen"] - r["predicted"]) <= 1e-3 for r in rows])),
        top_feature_on_image=mean("feature_on_image"))
    return dict(summary=summary, rows=rows)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=100)
    ap.add_argument("--scale", type=float, default=-1.0)
    ap.add_argument("--max-feature-nodes", type=int, default=512)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    result = measure(args.scenes, args.scale, args.max_feature_nodes)
    print(json.dumps(result["summary"], indent=1))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
