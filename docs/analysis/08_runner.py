"""Run any analysis over a dataset: batching of mixed lengths, progress bar, tidy saved results."""

import pandas as pd
from _setup import OUT, dataset, tiny_model

from hooked_vlm.analysis import attention_knockout, run_dataset, save_results, span_mask, spans_of

model = tiny_model()
red = model.to_single_token("red")


def eoi_knockout_effect(model, inputs):
    """One row per example: P(red) at the last position with and without EOI -> text attention."""
    last = span_mask(spans_of(model, inputs), "last")
    clean = model(**inputs)[last].softmax(-1)[:, red]
    ko = attention_knockout(model, inputs, src="eoi", dst="text")[last].softmax(-1)[:, red]
    return pd.DataFrame({"batch": range(len(clean)), "p_clean": clean.tolist(), "p_knockout": ko.tolist()})


df = run_dataset(model, dataset(10), eoi_knockout_effect, batch_size=4, progress=True)
print(df.round(4))
save_results(df, str(OUT / "eoi_knockout.csv"))
