"""Text -> image attention shares per layer (Narrow Gate sec. 2): how much goes to EOI?"""

from _setup import OUT, dataset, tiny_model

from hooked_vlm.analysis import attention_flow, plot_attention_flow

model = tiny_model()
flow = attention_flow(model, dataset(6), batch_size=4, progress=False)  # rows: text after the image
print(flow.pivot(index="layer", columns="role", values="share").round(3))
plot_attention_flow(flow).savefig(OUT / "attention_flow.png")

per_head = attention_flow(model, dataset(2), per_head=True, keys=["eoi", "image", "before_image"], progress=False)
print(per_head[per_head.role == "eoi"].pivot(index="layer", columns="head", values="share").round(3))
