"""``hooked-vlm demo``: the main analyses on the shipped toy LLaVA, as one HTML report with figures.

Sections: held-out accuracy; logit lens of one scene drawn on its patch grid, with links to its interactive
lens and attention views (lens_view.html, lens_view_attention.html next to the report; plus how often the
object's colour is the top colour word at the object's patches, per layer); attention flow of the
answering position per layer; object-patch vs random-patch mean ablation at the LM input; attention
knockout from the object's patches to the answering position per layer window; the narrow gate on the
native toys (toy-chameleon, understanding only, vs toy-chameleon-gen, also trained to generate images:
EOI / image -> text / random-code knockout and the text's attention share on EOI) and modality
separation per layer across the three toys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..toy.data import COLOURS, QUESTION_KINDS, make_scene, make_scenes, prompt
from ..toy.tasks import ToyEncoder, accuracy, hooked_logits_fn
from .effects import attention_flow, object_ablation, object_knockout, object_logit_lens

DEMO_SEED = 2024


def _bar_figure(groups: dict[str, dict[str, float]], title: str, ylabel: str = "accuracy (%)"):
    import matplotlib.pyplot as plt

    labels = list(groups)
    conds = list(next(iter(groups.values())))
    x = np.arange(len(labels))
    w = 0.8 / len(conds)
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(labels), 3.2))
    for i, c in enumerate(conds):
        vals = [groups[g][c] for g in labels]
        bars = ax.bar(x + (i - (len(conds) - 1) / 2) * w, vals, w, label=c)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(x, labels)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 110)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    return fig


def _flow_figure(flow: dict[str, list[float]]):
    import matplotlib.pyplot as plt

    n = len(next(iter(flow.values())))
    fig, ax = plt.subplots(figsize=(3.5 + 0.9 * n, 3.4))
    bottom = np.zeros(n)
    for key, vals in flow.items():
        ax.bar([f"layer {l}" for l in range(n)], vals, bottom=bottom, label=key)
        bottom += np.array(vals)
    ax.set_ylabel("share of the answer's attention")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    ax.set_title("attention flow per layer\n(mean over heads and scenes)", fontsize=10)
    fig.tight_layout()
    return fig


GATE_TOYS = {"toy-chameleon": "U: understanding", "toy-chameleon-gen": "U+G: + generation"}


def narrow_gate_section(rep: Any, n: int, say: Any) -> None:
    """The Narrow Gate paper's knockouts and attention share on the two native toys, and modality separation."""
    from hooked_vlm import HookedVLM
    from hooked_vlm.analysis import attention_flow as role_flow

    from .gate_effects import colour_inputs, knockout_accuracy
    from .separation import TOYS, figure, separation

    say("narrow gate ...")
    rep.heading("The narrow gate on toys (native, Chameleon-style)")
    rep.text("Two native toys with image codes in the vocabulary: toy-chameleon (2 layers) is trained on the answers only; "
             "toy-chameleon-gen (4 layers, python -m experiments.gate_experiment) is also trained to generate the "
             "images (next-code loss, caption -> image). The Narrow Gate hypothesis predicts that generation training makes "
             "the end-of-image token (EOI) the gate through which text reads the image: knocking EOI out should then hurt "
             "as much as blocking the whole image.")
    models = {name: HookedVLM.from_pretrained(name) for name in GATE_TOYS}
    ko = {name: knockout_accuracy(m, n, modes=("mask",)) for name, m in models.items()}
    groups = {f"{name}\n{what}": {k.replace(" (mask)", ""): v for k, v in ko[name].items()} for name, what in GATE_TOYS.items()}
    rep.figure(_bar_figure(groups, "colour accuracy, attention from text after the image to the keys blocked (all layers)"),
               "narrow_gate", "Keys knocked out (-inf before the softmax) for every text query after the image, in every "
               "layer: EOI, the paper's image -> text (BOI + every code), EOI + every code (all keys that hold the "
               "image), one random code (control).")
    rows = []
    for name, m in models.items():
        flow = role_flow(m, colour_inputs(ToyEncoder(m.processor), make_scenes(min(n, 100), DEMO_SEED)),
                         query_span="after_image", keys=["eoi", "boi", "image", "text"])
        share = flow[flow["role"] == "eoi"].sort_values("layer")["share"]
        rows.append([name, *(ko[name][k] for k in ko[name]), " / ".join(f"{x:.3f}" for x in share)])
    rep.table(["model", *ko[next(iter(ko))], "EOI share of the text's attention, per layer"], rows)
    say("modality separation ...")
    frames = {name: separation(HookedVLM.from_pretrained(name), n) for name in TOYS}
    rep.figure(figure(frames), "modality_separation",
               "Per layer: |cos| between an image token and a text token after the image of the same scene, and the "
               "homogeneity of a 2-means clustering of both against the modality labels (the paper's analysis 1).")


def run_demo(out: str | Path, model: Any = None, n: int = 200, progress: bool = True) -> Path:
    """Run every section and write ``out``/report.html (+ one PNG per figure). Returns the HTML path."""
    from hooked_vlm import HookedVLM
    from hooked_vlm.analysis import logit_lens
    from hooked_vlm.report import Report

    say = print if progress else (lambda *a, **k: None)
    model = model if model is not None else HookedVLM.from_pretrained("toy-llava")
    encoder = ToyEncoder(model.processor)
    rep = Report("hooked-vlm demo: the toy LLaVA", out)
    rep.text("A 1-layer CLIP tower (48x48 images, 8 px patches, 36 image tokens) and a 2-layer Llama LM trained on "
             "synthetic scenes of one coloured shape. Every scene knows which patches its object covers, so each "
             "effect below is measured against ground truth.")

    say("accuracy ...")
    acc = accuracy(hooked_logits_fn(model), encoder, make_scenes(n, DEMO_SEED), QUESTION_KINDS)
    rep.heading("Held-out accuracy")
    rep.table(["question", "prompt", "exact match (%)"], [[k, prompt(k).replace("\n", " "), acc[k]] for k in QUESTION_KINDS])

    say("logit lens ...")
    rep.heading("Logit lens on the image grid")
    scene = make_scene(np.random.default_rng(DEMO_SEED), colour="blue", shape="circle")
    inputs = model.prepare_inputs(images=scene.pil(), text=prompt("colour"))
    lens = logit_lens(model, inputs, targets=[scene.objects[0].colour])
    rep.figure(lens.plot(image=scene.image, what="target_prob"), "logit_lens_grid",
               f"Probability of '{scene.objects[0].colour}' read out (final norm + unembedding) at every image patch, "
               "per layer (layer l = residual entering block l; the last = model output).")
    from hooked_vlm.viz import write_views

    lens_html, att_html = write_views(model, inputs, Path(out) / "lens_view.html", image=scene.image,
                                      targets=[scene.objects[0].colour])
    rep.links("Explore this scene: the ", ("interactive logit lens", lens_html.name),
              " (hover a patch for its top tokens at every layer; the slider colours the grid layer by layer) and the ",
              ("interactive attention view", att_html.name),
              " (each head's attention from the answering position over the image and the prompt); both are "
              "self-contained HTML files next to this report.")
    top = object_logit_lens(model, n=n)
    top_all = object_logit_lens(model, n=n, vocab="all")
    rep.table(["layer", "object patches: top colour word = the object's colour (%)",
               "object patches: top token of the whole vocabulary = the object's colour (%)"],
              [[k, v, top_all[k]] for k, v in top.items()])

    say("attention flow ...")
    rep.heading("Attention flow")
    rep.figure(_flow_figure(attention_flow(model, n=min(n, 100))), "attention_flow",
               "Where the position that answers 'what colour is the shape ?' attends, per LM layer.")

    say("ablation ...")
    rep.heading("Object-patch mean ablation (Neo et al.)")
    abl = object_ablation(model, n=n)
    abl1 = object_ablation(model, n=n, buffer=1)
    groups = {f"{k}": v for k, v in abl.items()} | {f"{k} (+1 buffer)": v for k, v in abl1.items()}
    rep.figure(_bar_figure(groups, "mean ablation at the LM input: object patches vs as many random patches"), "ablation")
    rep.table(["question", "base", "object ablated", "random ablated"],
              [[k, v["base"], v["object"], v["random"]] for k, v in groups.items()])

    say("knockout ...")
    rep.heading("Attention knockout: object patches -> answering position")
    ko = object_knockout(model, n=n)
    rep.figure(_bar_figure(ko, "colour accuracy with attention edges blocked (-inf before softmax)"), "knockout")
    rep.table(["layers", "base", "object", "random", "all image"],
              [[k, v["base"], v["object"], v["random"], v["image"]] for k, v in ko.items()])
    narrow_gate_section(rep, n, say)
    rep.text(f"Colour words: {', '.join(COLOURS)}. Scenes are generated with fixed seeds; rerunning gives the same numbers.",
             note=True)
    path = rep.write()
    say(f"wrote {path}")
    return path
