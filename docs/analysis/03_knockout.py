"""Attention knockout (Narrow Gate sec. 4; Neo et al. sec. 3): block EOI, or the whole image, from the text."""

from _setup import dataset, tiny_model

from hooked_vlm.analysis import attention_knockout, knockout_generate, knockout_hooks, layer_windows

model = tiny_model()
image, text = dataset(1)[0]
inputs = model.prepare_inputs(images=image, text=text)
clean = model(**inputs)[0, -1].softmax(-1)

for name, src in [("eoi", "eoi"), ("image region", "image_region"), ("last image token", "image_last")]:
    for mode in ("mask", "zero"):
        ko = attention_knockout(model, inputs, src=src, dst="text", mode=mode)[0, -1].softmax(-1)
        print(f"{name:>17} -> text, {mode}: total variation {0.5 * (ko - clean).abs().sum():.4f}")

# layer windows (Neo et al.) and single heads
for window in layer_windows(model.cfg.n_layers, size=2, stride=1):
    ko = attention_knockout(model, inputs, src="image", dst="last", layers=window)[0, -1].softmax(-1)
    print("image -> last in layers", window, f"TV {0.5 * (ko - clean).abs().sum():.4f}")
heads = attention_knockout(model, inputs, src="eoi", dst="text", layers=[1], heads=[0, 2])

# the knockout persists while generating: new tokens cannot read the image either
print(knockout_generate(model, inputs, src="image_region", dst="text", max_new_tokens=5))
with model.hooks(fwd_hooks=knockout_hooks(model, "eoi", "text", mode="zero")):
    print(model.generate(**inputs, max_new_tokens=5))
