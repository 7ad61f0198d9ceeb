"""Honest processors: a missing or broken processor still loads the weights, prepare_inputs names the cause
and the fix, and the span marker ids (Janus, Chameleon, Emu3, Pixtral) survive a failed processor."""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from transformers.utils.import_utils import TORCHVISION_IMPORT_ERROR

from hooked_vlm import HookedVLM
from hooked_vlm.processors import ProcessorUnavailableError, UnavailableProcessor, missing_package
from tests import tiny
from tests import tiny_native as tn
from tests import tiny_next_pixtral as tnp
from tests import tiny_qwen_idefics as tqi


def _copy(folder: Path) -> Path:
    out = Path(tempfile.mkdtemp(prefix="broken_proc_")) / "ckpt"
    shutil.copytree(folder, out)
    return out


@pytest.fixture(scope="module")
def llava():
    """(folder with weights + a saved LlavaProcessor, hf model, a padded batch)."""
    folder, hf = tiny.make_llava()
    tiny.save_llava_processor(folder)
    return folder, hf, tiny.llava_batch(hf, [1, 1], [2, 0])


def _raise(err: BaseException):
    def fail(*args, **kwargs):
        raise err

    return staticmethod(fail)


def _load_warning(folder: Path, **kwargs) -> tuple[HookedVLM, str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = HookedVLM.from_pretrained(str(folder), **kwargs)
    texts = [str(w.message) for w in caught if "could not be loaded" in str(w.message)]
    assert len(texts) == 1, [str(w.message) for w in caught]
    return model, texts[0]


# (the error HF raises, what the message must name as the fix)
KNOWN = [
    (ImportError(TORCHVISION_IMPORT_ERROR.format("Qwen2VLVideoProcessor")), f"torch=={torch.__version__.split('+')[0]}"),
    (ValueError("/ckpt requires `torchvision` to be installed. Please install `torchvision` and try again."),
     "pip install torchvision"),
    (AttributeError("type object 'VIDEO_PROCESSOR_MAPPING' has no attribute '_extra_content'"), "pip install torchvision"),
    (ImportError("Package `num2words` is required to run SmolVLM processor. Install it with `pip install num2words`."),
     "pip install num2words"),
    (ModuleNotFoundError("No module named 'cv2'", name="cv2"), "pip install opencv-python"),
]


@pytest.mark.parametrize("err,fix", KNOWN, ids=["requires_backends", "video-auto", "video-mapping", "num2words", "cv2"])
def test_failed_processor_loads_weights_and_prepare_inputs_names_the_fix(llava, monkeypatch, err, fix):
    folder, hf, batch = llava
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", _raise(err))
    model, warning = _load_warning(folder)
    assert fix in warning  # the load warning names the cause and the fix
    assert isinstance(model.processor, UnavailableProcessor) and model.processor.reason == "failed"
    with torch.no_grad():  # the weights are there: logits equal HF's
        assert (hf(**batch).logits - model(**batch)).abs()[batch["attention_mask"].bool()].max().item() <= 1e-4
    assert model.tokenizer is not None and model.tokenizer.convert_tokens_to_ids("<image>") == tiny.IMAGE_TOKEN
    with pytest.raises(ProcessorUnavailableError) as info:
        model.prepare_inputs(images=tiny.pil_image(0), text="USER: <image> what is this ? ASSISTANT:")
    assert fix in str(info.value) and "could not be loaded" in str(info.value)
    assert info.value.__cause__ is err  # the original exception stays chained
    assert "had no processor files" not in str(info.value)


def test_unknown_failure_keeps_the_error_text(llava, monkeypatch):
    folder, _, _ = llava
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", _raise(KeyError("image_seq_length")))
    model, warning = _load_warning(folder)
    with pytest.raises(ProcessorUnavailableError, match=r"KeyError: 'image_seq_length'.*AutoProcessor.from_pretrained"):
        model.prepare_inputs(text="hello")
    assert missing_package(KeyError("x")) is None


@pytest.mark.parametrize("name", ["processor_config.json", "tokenizer.json", "tokenizer_config.json"])
def test_corrupt_processor_file_is_named(llava, name):
    folder = _copy(llava[0])
    text = (folder / name).read_text()
    (folder / name).write_text(text[: len(text) // 2])  # truncated
    model, warning = _load_warning(folder)
    assert f"{name} is not valid JSON" in warning and "download it again" in warning
    with pytest.raises(ProcessorUnavailableError, match=f"{name} is not valid JSON"):
        model.prepare_inputs(text="hello")


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="needs an environment without torchvision")
def test_real_smolvlm_processor_without_torchvision_names_torchvision():
    """No mock: SmolVLM's processor really needs torchvision (its video processor) in transformers 5.23."""
    folder, _ = tqi.make_idefics("smolvlm")
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    Idefics3ImageProcessorPil().save_pretrained(folder)
    (folder / "processor_config.json").write_text(json.dumps({"processor_class": "SmolVLMProcessor", "image_seq_len": 4}))
    model, warning = _load_warning(folder)
    assert "'torchvision'" in warning and "pip install torchvision" in warning
    with pytest.raises(ProcessorUnavailableError, match="pip install torchvision"):
        model.prepare_inputs(text="hello")


def test_no_processor_files_says_so():
    folder, hf = tiny.make_llava()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a weights-only folder is not a failure: no warning
        model = HookedVLM.from_pretrained(str(folder))
    assert model.tokenizer is None and model.processor.reason == "none"
    with pytest.raises(ProcessorUnavailableError, match="has no processor or tokenizer files.*processor=AutoProcessor"):
        model.prepare_inputs(text="hello")


def test_explicit_processor_none_says_so(llava):
    model = HookedVLM.from_pretrained(str(llava[0]), processor=None)
    with pytest.raises(ProcessorUnavailableError, match="processor=None"):
        model.prepare_inputs(text="hello")


def test_tokenizer_only_checkpoint():
    folder, _ = tiny.make_llava()
    tok = tiny.word_tokenizer()
    tok.save_pretrained(folder)
    model = HookedVLM.from_pretrained(str(folder))
    assert type(model.processor).__name__ == type(tok).__name__
    text = model.prepare_inputs(text=["what is this ?", "a red circle"])
    ref = tok(["what is this ?", "a red circle"], return_tensors="pt", padding=True)
    assert torch.equal(text["input_ids"], ref["input_ids"]) and torch.equal(text["attention_mask"], ref["attention_mask"])
    with pytest.raises(ProcessorUnavailableError, match="only a tokenizer.*no preprocessor_config.json"):
        model.prepare_inputs(images=tiny.pil_image(0), text="<image> what")


# ---------------------------------------------------------------- marker ids survive a failed processor
FAMILIES = {
    "janus": (lambda: tn.make_janus(tie_word_embeddings=False), tn.janus_processor),
    "chameleon": (tn.make_chameleon, tn.chameleon_processor),
    "emu3": (tn.make_emu3, tn.emu3_processor),
}
ROLE_FIELDS = ("image_token_id", "boi_token_id", "eoi_token_id", "row_break_token_ids", "extra")


def _roles(model) -> dict:
    return {f: getattr(model.cfg.roles, f) for f in ROLE_FIELDS}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    make, proc = FAMILIES[request.param]
    folder, hf = make()
    proc().save_pretrained(folder)
    model = HookedVLM.from_pretrained(str(folder))
    assert not isinstance(model.processor, UnavailableProcessor)
    _, cache = model.run_with_cache(**_batch(request.param, hf), names_filter="hook_embed")
    return request.param, folder, hf, _roles(model), cache.spans


def _batch(name, hf):
    return {"janus": lambda: tn.janus_batch(hf, [1, 2], [3, 0]), "chameleon": lambda: tn.chameleon_batch(hf, [1, 2], [3, 0]),
            "emu3": lambda: tn.emu3_batch(hf, [[(16, 24)], [(16, 16), (8, 16)]], [3, 0])}[name]()


def test_marker_ids_are_the_real_ones(family):
    name, _, hf, roles, _ = family
    if name == "janus":
        vocab = tn.janus_vocab()
        assert (roles["boi_token_id"], roles["eoi_token_id"]) == (vocab["<begin_of_image>"], vocab["<end_of_image>"])
    else:
        vmap = hf.config.vocabulary_map
        assert roles["boi_token_id"] == vmap[{"chameleon": "<racm3:break>", "emu3": "<|image start|>"}[name]]


@pytest.mark.parametrize("broken", ["import_error", "import_error_and_tokenizer_class", "corrupt_processor_config",
                                    "deleted_processor_config"])
def test_marker_ids_survive_a_failed_processor(family, monkeypatch, broken):
    name, folder, hf, roles, spans = family
    folder = _copy(folder)
    if broken == "corrupt_processor_config":
        (folder / "processor_config.json").write_text("{ not json")
    elif broken == "deleted_processor_config":  # no image processor left: a tokenizer-only checkpoint
        (folder / "processor_config.json").unlink()
    else:
        monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained",
                            _raise(ImportError(f"{name} processor requires num2words: pip install num2words")))
    if broken == "import_error_and_tokenizer_class":  # the tokenizer class cannot load either: ids from the files
        monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", _raise(ImportError("requires the tokenizers library")))
    if broken == "deleted_processor_config":
        model = HookedVLM.from_pretrained(str(folder))
        assert model.processor is model.tokenizer is not None
    else:
        model, _ = _load_warning(folder)
        assert isinstance(model.processor, UnavailableProcessor)
    assert _roles(model) == roles
    batch = _batch(name, hf)
    _, cache = model.run_with_cache(**batch, names_filter="hook_embed")
    assert sorted(cache.spans.masks) == sorted(spans.masks)  # every span the processor-loaded model has, equal
    for key, mask in spans.masks.items():
        assert torch.equal(cache.spans.masks[key], mask), key
    markers = ("boi", "eoi") if name != "emu3" else ("boi", "eoi", "image_wrapper", "end_of_frame")
    for span in markers:  # and the marker spans are not empty
        assert int(cache.spans.mask(span).sum()) == 3, span  # three images in the batch


def test_janus_without_any_readable_tokenizer_raises_at_load(family, monkeypatch):
    name, folder, _, _, _ = family
    if name != "janus":
        pytest.skip("Chameleon / Emu3 read their marker ids from config.json")
    folder = _copy(folder)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (folder / f).write_text("{ truncated")
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", _raise(ImportError("pip install num2words")))
    with pytest.raises(ProcessorUnavailableError, match="marker ids.*processor=None") as info:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            HookedVLM.from_pretrained(str(folder))
    assert "tokenizer.json is not valid JSON" in str(info.value)
    with pytest.warns(UserWarning, match="cannot be located"):  # the documented way out: no marker spans, a warning
        model = HookedVLM.from_pretrained(str(folder), processor=None)
    assert model.cfg.roles.boi_token_id is None


def test_pixtral_markers_survive_a_failed_processor(monkeypatch):
    """[IMG_BREAK] / [IMG_END] names come from processor_config.json, their ids from the tokenizer."""
    folder, _ = tnp.make_pixtral_llava()
    tnp.pixtral_processor().save_pretrained(folder)
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", _raise(ImportError(TORCHVISION_IMPORT_ERROR.format("X"))))
    model, warning = _load_warning(folder)
    assert "pip install torchvision" in warning
    assert model.cfg.roles.row_break_token_ids == (tnp.IMG_BREAK,) and model.cfg.roles.eoi_token_id == tnp.IMG_END
