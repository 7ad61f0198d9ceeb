"""Molmo 2 beyond tests/test_parity.py's CASES line: every vision layer and the attention-pooling adapter against HF,
the in-memory checkpoint layout, the OLMo-style LM options (all-head q/k norms, post-sublayer norms), the processor's
token layout in the spans, the bidirectional image block, and the refusals (video, RoPE per layer, bad windows).

Tolerances as in test_parity: fp32, 1e-4 against HF, 1e-5 between our attention paths."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from converters.base import UnsupportedConfigError
from tests import tiny
from tests import tiny_molmo2 as tm2

pytest.importorskip("transformers.models.molmo2", reason="this transformers has no Molmo 2 (added in 5.20)")

ATOL = 1e-4
PATH_ATOL = 1e-5


def _real(inputs: dict) -> torch.Tensor:
    return inputs["attention_mask"].bool()


def _max(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.mark.parametrize("explicit", [False, True])
def test_every_vision_layer_and_the_adapter_match_hf(explicit):
    b = tm2.molmo2()
    model, hf, inputs = b.model, b.hf, b.inputs
    n = model.cfg.vision.tower.n_layers
    with torch.no_grad():
        states = hf.model.vision_tower(inputs["pixel_values"], output_hidden_states=True).hidden_states
        pooled = hf.model.get_image_features(inputs["pixel_values"], inputs["image_token_pooling"],
                                             inputs["image_grids"]).pooler_output
    hooks = [(f"vision.blocks.{l}.attn.hook_pattern", lambda t, hook: t) for l in range(n)] if explicit else []
    with model.hooks(fwd_hooks=hooks), torch.no_grad():
        _, cache = model.run_with_cache(**inputs, names_filter=lambda name: name.startswith(("vision.", "projector."))
                                        or name == "hook_image_embeds")
    assert len(states) == n + 1
    assert _max(states[0], cache["vision.hook_embed"]) <= ATOL
    for layer in range(n):  # every layer, the last included
        assert _max(states[layer + 1], cache[f"vision.blocks.{layer}.hook_resid_post"]) <= ATOL, f"layer {layer}"
    # the adapter reads layers [-1, 0] concatenated in that order: HF hidden_states[-1], [0 + 1]
    assert _max(torch.cat([states[-1], states[1]], -1), cache["projector.hook_in"]) <= ATOL
    assert _max(torch.cat(pooled), cache["projector.hook_out"]) <= ATOL
    assert torch.equal(cache["projector.hook_out"], cache["hook_image_embeds"])
    # the pooling attention sums to one over each window's real patches and gives the empty slots nothing
    pattern, windows = cache["projector.hook_pattern"], inputs["image_token_pooling"]
    assert torch.allclose(pattern.sum(-1), torch.ones_like(pattern.sum(-1)))
    assert bool((pattern.permute(1, 0, 2)[:, windows < 0] == 0).all()) and bool((windows < 0).any())
    # the image path counts: other pixels move the logits far beyond the tolerance (measured 0.47)
    with torch.no_grad():
        other = model(**dict(inputs, pixel_values=torch.randn_like(inputs["pixel_values"])))
        assert _max(other[_real(inputs)], model(**inputs)[_real(inputs)]) > 100 * ATOL


def test_the_in_memory_checkpoint_layout_loads_to_the_same_model():
    """save_pretrained writes the original layout (att_proj, ff_proj, wte.embedding / new_embedding split in two equal
    halves, vision_backbone.*); the in-memory names (q/k/v_proj, gate/up_proj, one embed_tokens) load too."""
    from safetensors.torch import save_file

    from hooked_vlm import HookedVLM

    b = tm2.molmo2()
    folder = Path(tempfile.mkdtemp(prefix="tiny_molmo2_in_memory_"))
    try:
        for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            if (b.folder / name).exists():
                shutil.copy(b.folder / name, folder / name)
        state = {k: v.contiguous() for k, v in b.hf.state_dict().items()}
        assert "model.language_model.layers.0.self_attn.q_proj.weight" in state
        assert "model.language_model.embed_tokens.weight" in state
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        saved = json.loads((b.folder / "config.json").read_text())
        assert saved["architectures"] == ["Molmo2ForConditionalGeneration"]
        other = HookedVLM.from_pretrained(str(folder))
        with torch.no_grad():
            assert torch.equal(other(**b.inputs), b.model(**b.inputs))
    finally:
        shutil.rmtree(folder)


@pytest.mark.parametrize("explicit", [False, True])
def test_olmo_qk_norm_and_post_sublayer_norms_match_hf(explicit):
    """qk_norm_type="olmo" (one RMS norm over all heads of q, of k) and norm_after (x + norm(f(x)))."""
    b = tm2.molmo2(qk_norm_type="olmo", norm_after=True)
    model, inputs = b.model, b.inputs
    assert model.cfg.text.qk_norm_scope == "all" and model.cfg.text.norm_placement == "post_sublayer"
    hooks = tiny.pattern_hooks(model) if explicit else []
    with torch.no_grad():
        ref = b.hf(**inputs).logits
        with model.hooks(fwd_hooks=hooks):
            ours = model(**inputs)
    real = _real(inputs)
    assert _max(ref[real], ours[real]) <= ATOL
    # the options act: the default-config model of the same seed is far away
    with torch.no_grad():
        plain = tm2.molmo2().hf(**inputs).logits
    assert _max(ref[real], plain[real]) > 100 * ATOL


def test_spans_follow_the_processor_layout():
    """Item 1 holds two images: each a low-res 2 x 2 grid (tile 0) then its high-res grid (tile 1), rows separated by
    <im_col> (row_break), grids wrapped in <low_res_im_start> / <im_start> ... <im_end>."""
    b = tm2.molmo2()
    model, inputs = b.model, b.inputs
    spans = model.spans_for(inputs["input_ids"], inputs["attention_mask"], model.image_layouts(inputs["pixel_values"], inputs))
    grids = inputs["image_grids"].tolist()
    ids = inputs["input_ids"]
    sp = tm2.SPECIAL
    for item, images in ((0, [0]), (1, [1, 2]), (2, [3])):
        for i, g in enumerate(images):
            lr_h, lr_w, hr_h, hr_w = grids[g]
            pos = spans.positions(f"image.{i}", item)
            cells = spans.grid[item, pos]
            assert cells[:, 0].eq(i).all()
            low, high = cells[cells[:, 1] == 0], cells[cells[:, 1] == 1]
            assert len(low) == lr_h * lr_w and len(high) == hr_h * hr_w
            assert low[:, 2].max() == lr_h - 1 and low[:, 3].max() == lr_w - 1
            assert high[:, 2].max() == hr_h - 1 and high[:, 3].max() == hr_w - 1
            # row-major, one <im_col> after every row: the next row starts two positions after a row's last token
            for tile, w in ((0, lr_w), (1, hr_w)):
                p = pos[cells[:, 1] == tile]
                rows = p.view(-1, w)
                assert (rows[:, 1:] - rows[:, :-1]).eq(1).all()
                assert ids[item, rows[:, -1] + 1].eq(sp["<im_col>"]).all()
            assert ids[item, pos[0] - 1] == sp["<low_res_im_start>"]
            assert spans.mask("low_res")[item, pos].tolist() == (cells[:, 1] == 0).tolist()
    counts = {name: int(spans.mask(name).sum()) for name in ("boi", "eoi", "low_res_boi", "row_break")}
    n_rows = sum(g[0] + g[2] for g in grids)
    assert counts == {"boi": 4, "eoi": 8, "low_res_boi": 4, "row_break": n_rows}
    assert int(spans.mask("image").sum()) == inputs["image_token_pooling"].shape[0]


def test_the_bidirectional_image_block_is_hfs_and_needs_its_input():
    b = tm2.molmo2()
    model, inputs = b.model, b.inputs
    real = _real(inputs)
    causal = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    with torch.no_grad():
        ref, ref_causal = b.hf(**inputs).logits, b.hf(**causal).logits
        ours_causal = model(**causal)
    assert _max(ref_causal[real], ours_causal[real]) <= ATOL  # HF without the input: causal, as ours
    assert _max(ref[real], ref_causal[real]) > 100 * ATOL  # the block matters (so the parity cases test it)
    _, cache = model.run_with_cache(**inputs, names_filter="blocks.0.attn.hook_mask")
    mask, marks = cache["blocks.0.attn.hook_mask"][:, 0], inputs["mm_token_type_ids"].bool()
    item = 1  # an early image token sees the later image's tokens and markers, a text token only the past
    first, last = marks[item].nonzero()[0, 0], marks[item].nonzero()[-1, 0]
    assert bool(mask[item, first, last]) and not bool(mask[item, first - 1, first])
    bad = dict(inputs, mm_token_type_ids=inputs["mm_token_type_ids"] * 0)
    with pytest.raises(ValueError, match="mm_token_type_ids leaves image tokens unmarked"):
        model(**bad)
    with pytest.raises(ValueError, match="must be 0 .* or 1"):
        model(**dict(inputs, mm_token_type_ids=inputs["mm_token_type_ids"] * 2))


def test_video_and_malformed_image_inputs_are_refused():
    b = tm2.molmo2()
    model, inputs = b.model, b.inputs
    with pytest.raises(ValueError, match="video input .* not converted"):
        model(**inputs, pixel_values_videos=inputs["pixel_values"])
    windows = inputs["image_token_pooling"].clone()
    windows[0, 0] = inputs["pixel_values"].shape[0] * inputs["pixel_values"].shape[1]  # one past the last patch
    with pytest.raises(ValueError, match="indices into the .* patches"):
        model(**dict(inputs, image_token_pooling=windows))
    with pytest.raises(ValueError, match="image_grids .* give .* image tokens"):
        model(**dict(inputs, image_grids=inputs["image_grids"].flip(0) + torch.tensor([0, 0, 1, 0])))
    with pytest.raises(ValueError, match="image_num_crops says"):
        model(**dict(inputs, image_num_crops=inputs["image_num_crops"] + 1))
    with pytest.raises(ValueError, match=r"expects \[crop, 25, 12\]"):
        model(**dict(inputs, pixel_values=inputs["pixel_values"][:, :8]))


def _hf_config(text: dict | None = None, **top):
    from transformers import Molmo2Config

    kwargs = dict(text_config=text or tm2.text_config(), vision_config=tm2.vision_config(),
                  adapter_config=tm2.adapter_config(), image_patch_id=122)
    kwargs.update(top)
    return Molmo2Config(**kwargs)


def test_refusals_name_the_field_at_their_boundary():
    from converters.molmo2 import molmo2_config

    linear = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    # every layer scaled: one table, accepted; one layer left unscaled: two tables, refused by name
    assert molmo2_config(_hf_config(tm2.text_config(rope_parameters=linear, rope_scaling_layers=[0, 1, 2]))).text.n_layers == 3
    with pytest.raises(UnsupportedConfigError, match="rope_scaling_layers"):
        molmo2_config(_hf_config(tm2.text_config(rope_parameters=linear, rope_scaling_layers=[0, 1])))
    # the default type: the two tables are equal, any subset is fine
    molmo2_config(_hf_config(tm2.text_config(rope_scaling_layers=[0])))
    with pytest.raises(UnsupportedConfigError, match="tie_word_embeddings"):
        molmo2_config(_hf_config(tie_word_embeddings=True))
    with pytest.raises(UnsupportedConfigError, match="text_hidden_size"):
        molmo2_config(_hf_config(adapter_config=tm2.adapter_config(text_hidden_size=48)))
    with pytest.raises(UnsupportedConfigError, match="num_position_embeddings"):
        molmo2_config(_hf_config(vision_config=tm2.vision_config(num_position_embeddings=24)))


def test_the_hub_files_embedding_split_maps_onto_one_table():
    """allenai/Molmo2-4B's safetensors hold wte.embedding [151936, 2560] + wte.new_embedding [128, 2560] (its index
    lists those names and 4,850,869,200 parameters, HF's count for the config); save_pretrained writes two halves of
    76,032 rows. Both fill embed.weight exactly once, and the rest of the walk is clean."""
    from tests.test_real_configs import REAL, _problems, config_folder, hf_meta_model, saved_names
    from hooked_vlm.inspect import meta_model
    from hooked_vlm.loading import converter_for
    from hooked_vlm.tensor_mapping import map_checkpoint_tensors

    hf_config, converter, cfg = converter_for(config_folder(REAL / "allenai__Molmo2-4B.json"))
    ours, keymap = meta_model(cfg), converter.make_keymap(cfg)
    saved = saved_names(hf_meta_model(hf_config))
    assert saved["model.transformer.wte.embedding"] == saved["model.transformer.wte.new_embedding"] == (76032, 2560)
    hub = dict(saved, **{"model.transformer.wte.embedding": (151936, 2560),
                         "model.transformer.wte.new_embedding": (128, 2560)})
    for shapes in (saved, hub):
        assert _problems(map_checkpoint_tensors(ours, keymap, shapes)) == {}
    assert keymap.target("model.transformer.wte.new_embedding", (128, 2560)).index == (slice(151936, 152064),)
    wrong = dict(hub, **{"model.transformer.wte.embedding": (151930, 2560)})  # six rows short: a gap, not filled
    assert _problems(map_checkpoint_tensors(ours, keymap, wrong)) == {"missing": ["embed.weight"]}


def test_row_break_id_comes_from_the_tokenizer_when_the_config_lacks_it():
    """HF's Molmo2Config declares no image_col_id (the released configs carry one): finalize reads <im_col>."""
    from converters.molmo2 import molmo2_config, molmo2_finalize

    cfg = molmo2_config(_hf_config(image_start_token_id=120, image_end_token_id=121))
    assert cfg.roles.row_break_token_ids == ()
    molmo2_finalize(cfg, tm2.tokenizer())
    assert cfg.roles.row_break_token_ids == (tm2.SPECIAL["<im_col>"],)
    with_col = molmo2_config(_hf_config(image_col_id=99))
    molmo2_finalize(with_col, tm2.tokenizer())  # the config's id wins
    assert with_col.roles.row_break_token_ids == (99,)
