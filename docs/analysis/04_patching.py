"""Steering by patching EOI (Narrow Gate sec. 6): copy image A's EOI into image B's run."""

from _setup import prompt, random_image, tiny_model

from hooked_vlm.analysis import activation_patching, patching_sweep, steer, steering_vector

model = tiny_model()
text = prompt("what colour is this ?")
target = model.prepare_inputs(images=[random_image(1), random_image(2)], text=[text, text])
source = model.prepare_inputs(images=[random_image(3), random_image(4)], text=[text, text])
red, blue = model.to_single_token("red"), model.to_single_token("blue")

# (a) residual stream entering layer l, EOI only, one layer at a time
sweep = patching_sweep(model, target, source, tokens=(red, blue), span="eoi", site="resid_pre")
print(sweep.groupby("layer")[["flipped", "similarity", "clean_similarity"]].mean())
# (b) attention input (after ln1) at every layer from l on
cum = patching_sweep(model, target, source, tokens=(red, blue), span="eoi", site="attn_in", cumulative=True)
print(cum.groupby("layer")[["flipped", "similarity"]].mean())

# one patched run, and a steering vector added with a scale
logits = activation_patching(model, target, source, span="eoi", site="resid_pre", layers=[1])
vec = steering_vector(model, source, target, span="eoi", site="resid_pre", layer=1)
steered = steer(model, target, vec, scale=4.0, span="eoi", site="resid_pre", layers=[1])
print("logit diff red-blue, patched vs steered:", (logits[:, -1, red] - logits[:, -1, blue]).tolist(),
      (steered[:, -1, red] - steered[:, -1, blue]).tolist())
