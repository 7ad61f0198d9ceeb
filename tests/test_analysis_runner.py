"""Dataset runner: mixed-length batches give each item's own numbers; (image, prompt) pairs; tidy saved results."""

from __future__ import annotations

import pandas as pd
import torch

from hooked_vlm.analysis import attention_flow, collate, forward_with_hooks, logit_lens, run_dataset, save_results
from hooked_vlm.analysis import span_mask, spans_of
from tests import tiny_analysis as ta

ATOL = 1e-4


def _last_frame(model, inputs):
    logits = forward_with_hooks(model, inputs)
    last = span_mask(spans_of(model, inputs), "last")
    top = logits[last].argmax(-1)
    return pd.DataFrame({"batch": range(len(top)), "top": top.tolist(), "logit": logits[last].max(-1).values.tolist()})


def test_mixed_lengths_in_one_batch_match_single_runs(tmp_path):
    model, hf = ta.model_and_hf()
    data = [ta.example(hf, s, text_after=t) for s, t in ((1, 2), (2, 6), (3, 4))]
    batched = collate(model, data)
    assert batched["input_ids"].shape == (3, max(int(d["input_ids"].shape[1]) for d in data))
    logits = forward_with_hooks(model, batched)
    for i, ex in enumerate(data):
        single = forward_with_hooks(model, ex)[0]
        n = single.shape[0]
        assert (logits[i, -n:] - single).abs().max().item() <= ATOL
    df = run_dataset(model, data, _last_frame, batch_size=2, progress=False)
    assert list(df.example) == [0, 1, 2]
    for i, ex in enumerate(data):
        assert df.top[i] == forward_with_hooks(model, ex)[0, -1].argmax().item()
    path = tmp_path / "res.csv"
    save_results(df, str(path))
    # Floats parsed by Python's float(): pandas < 3.1's CSV float parser can miss the last bit of a float64
    # written as its shortest repr (pandas 3.0.6, the make test-min venv); 3.1 deprecates float_precision.
    exact = {c: float for c in df.select_dtypes("float").columns}
    assert pd.read_csv(path, converters=exact).equals(df)


def test_image_prompt_pairs_go_through_the_processor():
    model, _ = ta.model_and_hf()
    pairs = [(ta.random_image(i), f"<s> USER: <boi> <image> <eoi> what {w} is this ? ASSISTANT: It is")
             for i, w in enumerate(["colour", "shape", "colour a"])]
    flow_pairs = attention_flow(model, pairs, batch_size=2, progress=False)
    inputs = [model.prepare_inputs(images=img, text=p) for img, p in pairs]
    flow_dicts = attention_flow(model, inputs, batch_size=3, progress=False)
    assert (flow_pairs.weight - flow_dicts.weight).abs().max() <= ATOL
    lens = logit_lens(model, inputs[0], targets=["red", "circle"], top_k=2)
    df = lens.to_dataframe("targets")
    assert set(df.token) == {"red", "circle"} and lens.target_ids.tolist() == [3, 6]
    # the last readout (final norm + unembedding) is the model's own next-token distribution at those positions
    probs = forward_with_hooks(model, inputs[0])[0].float().softmax(-1)[lens.positions]
    assert (lens.target_probs[-1] - probs[:, [3, 6]]).abs().max().item() <= 1e-5
    assert torch.equal(lens.top_ids[-1], probs.topk(2, -1).indices)
