"""Mean-ablation of object tokens at the LM input (Neo et al. 2024, sec. 1)."""

from _setup import dataset, tiny_model

from hooked_vlm.analysis import (ablation_hook, grid_cells_mask, high_norm_span, mean_activation, prompt_span,
                                 random_span, span_ablation, spans_of)

model = tiny_model()
data = dataset(6)
mean = mean_activation(model, data, span="image", hook_name="hook_embed", progress=False)  # [d_model]
print("mean projector output:", mean.shape)

image, text = data[0]
inputs = model.prepare_inputs(images=image, text=text)
spans = spans_of(model, inputs)
object_tokens = grid_cells_mask(spans, cells=[(1, 1), (1, 2)], buffer=1)  # object cells + 1-cell buffer
print("ablating", int(object_tokens.sum()), "of", int(spans.mask("image").sum()), "image tokens")

clean = model(**inputs)[0, -1].softmax(-1)
ablated = span_ablation(model, inputs, span=object_tokens, how="mean", value=mean)[0, -1].softmax(-1)
zeroed = span_ablation(model, inputs, span="image", how="zero")[0, -1].softmax(-1)
red = model.to_single_token("red")
control = random_span(spans, n=int(object_tokens.sum()), seed=0)  # same number of random image tokens
random_ablated = span_ablation(model, inputs, span=control, how="mean", value=mean)[0, -1].softmax(-1)
registers = high_norm_span(model, inputs)  # norm > mean + 2 sd
print("random-token control P(red):", f"{random_ablated[red]:.4f}", "| high-norm tokens:", int(registers.sum()))
print(f"P(red): clean {clean[red]:.4f}  object-mean-ablated {ablated[red]:.4f}  all-image-zeroed {zeroed[red]:.4f}")

# the same ablation as a hook you can combine with anything else, e.g. while generating: the sequence grows, so the
# prompt's mask is wrapped in prompt_span (the generated positions are not in it; a bare prompt mask would raise)
hook = ablation_hook(prompt_span(object_tokens), how="mean", value=mean)
print(model.generate(**inputs, fwd_hooks=[("hook_embed", hook)], max_new_tokens=4))
