"""Logit lens over the image tokens (Neo et al. 2024, sec. 2): which words do image patches decode to?"""

from _setup import OUT, dataset, tiny_model

from hooked_vlm.analysis import logit_lens

model = tiny_model()
image, text = dataset(1)[0]
inputs = model.prepare_inputs(images=image, text=text)

# every layer (0 = LM input ... n_layers = output), every image token, top-5 + two target words
lens = logit_lens(model, inputs, span="image", top_k=5, targets=["red", "circle"])
print(lens.top_ids.shape, "= [layer, image token, k]")
top = lens.to_dataframe("top")
print(top[top.k == 0].groupby("layer").token.agg(lambda t: t.value_counts().index[0]))

grid = lens.to_grid(what="target_prob", target=0)  # [layer, rows, cols]: P("red") on the patch grid
print("P(red) on the grid, last layer:\n", grid[-1])
fig = lens.plot(image=image, what="target_prob", target=0)
fig.savefig(OUT / "logit_lens_red.png")

# image-code readout (Chameleon/Emu3): softmax over the image-code ids only
codes = list(range(20, 60))  # stand-in ids; real models give model.vocab_roles.image_code_ids
img_lens = logit_lens(model, inputs, layers=[-1], vocab="image", image_code_ids=codes, top_k=3)
print("top image codes at the last layer:", img_lens.top_ids[0, :3].tolist())
