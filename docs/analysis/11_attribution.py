"""Per-patch direct logit attribution and attribution patching (see docs/attribution.md for the measured numbers).

(a) ``patch_attribution``: how much each source position (image patch or text token), through each layer's
    attention heads, adds directly to a target logit (or a logit difference) at the last position, with the
    final norm's scale frozen as TransformerLens does. The attention part of each layer sums to its
    ``hook_attn_out`` read the same way.
(b) ``attribution_patching``: the linear estimate (gradient x activation difference, Nanda 2023) of the effect
    of patching every (layer, position) from a clean run into a corrupt one, in two forwards and one backward;
    ``exact_patching`` computes the real effects (one patched run each) to check it.

On the trained toy model use ``HookedVLM.from_pretrained("toy-llava")`` and its colour questions
(``hooked_vlm.toy``): there the object's patches carry ~90% of the colour logit's image attribution.
"""

from _setup import OUT, prompt, random_image, tiny_model

from hooked_vlm.analysis import (attribution_patching, exact_patching, grid_cells_mask, last_logit_diff_metric,
                                 patch_attribution, rank_correlation)

model = tiny_model()
text = prompt("what colour is this ?")
image = random_image(1)
inputs = model.prepare_inputs(images=[image], text=[text])
red, blue = model.to_single_token("red"), model.to_single_token("blue")

# (a) which patches, through which heads, push logit(red) - logit(blue) at the last position
attr = patch_attribution(model, inputs, target=(red, blue))
print("attribution [batch, layer, head, position]:", tuple(attr.attribution.shape))
check = attr.attribution.sum((2, 3)) + attr.bias - attr.attn_total  # per layer: heads x sources + bias = attn_out
print("max |sum - attn_out| per layer:", float(check.abs().max()))
print("direct terms: embed %.3f + attention %.3f + MLPs %.3f = logit diff %.3f" % (
    attr.embed_total[0], attr.attn_total[0].sum(), attr.mlp_total[0].sum(), attr.logit[0]))
print("patch grid (summed over layers and heads):\n", attr.to_grid())
top_left = grid_cells_mask(attr.spans, [(0, 0), (0, 1), (1, 0), (1, 1)])
print("share of the image attribution on the top-left 2x2 patches: %.2f" % attr.share(top_left, within="image"))
attr.plot(image).savefig(OUT / "patch_attribution.png")  # one panel per layer + the total, diverging colours
attr.plot(image, by="head").savefig(OUT / "patch_attribution_heads.png")

# (b) attribution patching: the same prompt about another image is the corrupt run
corrupt = model.prepare_inputs(images=[random_image(2)], text=[text])
metric = last_logit_diff_metric(model, corrupt, (red, blue))
hooks = ("resid_pre", "attn_out", "mlp_out")
est = attribution_patching(model, inputs, corrupt, metric, hooks=hooks)  # 2 forwards + 1 backward
print("metric clean %.3f, corrupt %.3f" % (est.clean_metric[0], est.corrupt_metric[0]))
exact = exact_patching(model, inputs, corrupt, metric, hooks=hooks, progress=False)  # one patched run per entry
for h in hooks:
    print(f"{h}: Spearman(estimate, exact) = {rank_correlation(est, exact, h):.2f}")
est.plot(str_tokens=model.to_str_tokens(corrupt)).savefig(OUT / "attribution_patching.png")
print(est.to_dataframe().sort_values("effect", key=abs, ascending=False).head())
