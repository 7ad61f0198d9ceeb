"""Interactive views (hooked_vlm.viz): every analysis result as one self-contained HTML file (or inline in a
notebook: the last line of a cell displays it). Open the files written to OUT in any browser, offline."""

from _setup import OUT, dataset, tiny_model

from hooked_vlm.analysis import attention_flow, attention_knockout, logit_lens, patching_sweep, span_ablation
from hooked_vlm.viz import attention_view, compare_predictions, seen_image

model = tiny_model()
(image, text), (other, _) = dataset(2)
inputs = model.prepare_inputs(images=image, text=text)
picture = seen_image(model, inputs, fallback=image)  # the image as the model saw it (processor crop undone)

# logit lens: hover a patch or a prompt token (span="all") for its top-5 at every layer; the slider colours the grid
lens = logit_lens(model, inputs, span="all", targets=["red", "circle"])
print(lens.to_html(OUT / "lens.html", image=picture))

# attention of the last token (click another prompt token to make it the query), per layer and head
print(attention_view(model, inputs, image=picture).save(OUT / "attention.html"))

# DataFrames that display as interactive plots (hover for the values); .save_view(path) writes the file
source = model.prepare_inputs(images=other, text=text)
sweep = patching_sweep(model, inputs, source, [model.to_single_token("red"), model.to_single_token("blue")], span="image")
print(sweep.save_view(OUT / "patching.html"))
print(attention_flow(model, inputs).save_view(OUT / "flow.html"))

# clean vs edited next-token predictions (span_ablation / attention_knockout return logits)
runs = {"image zeroed": span_ablation(model, inputs, span="image", how="zero"),
        "eoi -> last knocked out": attention_knockout(model, inputs, src="eoi", dst="last")}
cmp = compare_predictions(model, inputs, runs, highlight={"image zeroed": "image"}, image=picture)
print(cmp.to_dataframe())
print(cmp.to_html(OUT / "predictions.html"))
