"""Loading a checkpoint's HF processor honestly: what is missing, why, and how to fix it.

Three outcomes besides success, kept apart because the fix differs:

- the folder has no processor or tokenizer files at all (a weights-only copy);
- the processor files are there but loading them failed (a missing optional package such as
  ``num2words`` or ``torchvision``, a corrupt JSON file, ...): the original exception is kept and
  mapped to a concrete fix where the cause is known;
- only a tokenizer (no image processor): text-only prompts work, images need the image processor.

In the first two cases ``model.processor`` is an :class:`UnavailableProcessor`: the weights load
(with a warning that names the cause), ``model(**inputs)`` works with inputs built elsewhere, and
``model.prepare_inputs`` (or calling the stand-in) raises :class:`ProcessorUnavailableError` with the
cause and the fix. It still carries the checkpoint's tokenizer when that loaded on its own (so
``model.tokenizer`` decodes) and the string settings of ``processor_config.json`` (e.g. Pixtral's
``image_break_token``), and :func:`marker_vocab` finds token ids in the tokenizer files directly when
even the tokenizer class cannot load -- so span marker ids are not lost silently.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any, Callable

PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
CHECKED_JSON = PROCESSOR_FILES + ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                  "video_preprocessor_config.json", "chat_template.json")
#: import name -> pip package, where they differ
PIP_NAMES = {"PIL": "pillow", "cv2": "opencv-python", "sklearn": "scikit-learn", "google": "protobuf", "jinja": "jinja2",
             "yaml": "pyyaml", "mistral_common": "mistral-common", "levenshtein": "levenshtein"}
_PACKAGE_PATTERNS = (
    r"requires the ([\w\-]+) library",  # transformers' requires_backends
    r"requires `([\w\-]+)`",  # e.g. "... requires `torchvision` to be installed"
    r"[Pp]ackage `([\w\-]+)` is required",  # e.g. SmolVLM's num2words check
    r"pip install ([\w\-]+)",
    r"Missing optional dependencies: ([\w\-]+)",  # transformers 5.23's image-processor backends (e.g. torchvision)
)


class ProcessorUnavailableError(RuntimeError):
    """model.prepare_inputs cannot run: the checkpoint's processor is missing or failed to load."""


class UnavailableProcessor:
    """Stands in for a processor that is absent (``reason="none"``) or failed to load (``reason="failed"``).

    Calling it raises :class:`ProcessorUnavailableError`; ``tokenizer`` is the checkpoint's tokenizer when it
    loaded alone (else None); other attributes are the string settings saved in ``processor_config.json``.
    """

    def __init__(self, folder: str | Path, reason: str, cause: str, fix: str, error: BaseException | None = None,
                 tokenizer: Any = None, settings: dict[str, str] | None = None, tokenizer_error: str | None = None):
        self.folder, self.reason, self.cause, self.fix, self.error = Path(folder), reason, cause, fix, error
        self.tokenizer, self.tokenizer_error = tokenizer, tokenizer_error
        self.settings = dict(settings or {})

    def __getattr__(self, name: str) -> Any:
        settings = self.__dict__.get("settings", {})
        if name in settings:
            return settings[name]
        raise AttributeError(name)

    def message(self) -> str:
        if self.reason == "none":
            return (f"the checkpoint folder {self.folder} has no processor or tokenizer files "
                    f"({', '.join(PROCESSOR_FILES + TOKENIZER_FILES[:2])}), so model.prepare_inputs cannot build "
                    f"inputs. Fix: {self.fix}")
        tokenizer = ("; model.tokenizer works for text" if self.tokenizer is not None else
                     f" (the tokenizer alone failed too: {self.tokenizer_error})" if self.tokenizer_error else "")
        return (f"the HF processor of {self.folder} could not be loaded: {self.cause}. Fix: {self.fix}. "
                f"Until then build inputs elsewhere and call model(**inputs){tokenizer}")

    def raise_error(self) -> None:
        raise ProcessorUnavailableError(self.message()) from self.error

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.raise_error()

    def __repr__(self) -> str:
        return f"UnavailableProcessor(reason={self.reason!r}, cause={self.cause!r})"


def has_files(folder: Path, names: tuple[str, ...]) -> bool:
    return any((folder / n).exists() for n in names)


def load_processor_or_standin(folder: str | Path, loader: Callable[[str], Any]) -> Any:
    """``loader(folder)`` (the converter's or AutoProcessor's); an :class:`UnavailableProcessor` when it fails."""
    path = Path(folder)
    if not has_files(path, PROCESSOR_FILES + TOKENIZER_FILES):
        return UnavailableProcessor(path, "none", "no processor files", NO_FILES_FIX)
    try:
        processor = loader(str(path))
    except Exception as err:  # kept: re-raised (chained) by prepare_inputs; the weights still load
        cause, fix = diagnose(err, path)
        tokenizer, tokenizer_error = _tokenizer_alone(path)
        standin = UnavailableProcessor(path, "failed", cause, fix, error=err, tokenizer=tokenizer,
                                       settings=_saved_settings(path), tokenizer_error=tokenizer_error)
        warnings.warn(f"{standin.message()}. The weights are loaded.", stacklevel=3)
        return standin
    if processor is None:
        return UnavailableProcessor(path, "none", "no processor files", NO_FILES_FIX)
    return processor


NO_FILES_FIX = ("load the checkpoint's processor from where the weights came from and pass it, e.g. "
                "HookedVLM.from_pretrained(folder, processor=AutoProcessor.from_pretrained('<hub id>')), or set "
                "model.processor = ...; model(**inputs) works with inputs built elsewhere")


def diagnose(err: BaseException, folder: Path) -> tuple[str, str]:
    """(cause, fix) for a processor that failed to load: a corrupt file, a missing package, or the error as is."""
    for name in CHECKED_JSON:
        file = folder / name
        if file.exists():
            try:
                json.loads(file.read_text())
            except (ValueError, UnicodeDecodeError) as bad:
                return (f"{name} is not valid JSON ({bad})",
                        f"{file} is corrupt or truncated: download it again (e.g. huggingface_hub.hf_hub_download("
                        f"repo_id, {name!r}, force_download=True)) or restore it from the original checkpoint")
    package = missing_package(err)
    if package is not None:
        return f"it needs the Python package {package!r}, which is not installed ({_first_line(err)})", install_hint(package)
    return (f"{type(err).__name__}: {_first_line(err)}",
            f"run transformers.AutoProcessor.from_pretrained({str(folder)!r}) to see the full traceback, fix what it "
            "names, or pass processor=... to from_pretrained")


def missing_package(err: BaseException) -> str | None:
    """The pip package a failed import asks for (walks the exception chain), else None."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ModuleNotFoundError) and e.name:
            top = e.name.split(".")[0]
            return PIP_NAMES.get(top, top)
        text = str(e)
        if "VIDEO_PROCESSOR_MAPPING" in text or "_extra_content" in text:  # transformers 5.23 without torchvision
            return "torchvision"
        for pattern in _PACKAGE_PATTERNS:
            found = re.search(pattern, text)
            if found:
                name = found.group(1)
                return PIP_NAMES.get(name, name.lower())
        e = e.__cause__ or e.__context__
    return None


def install_hint(package: str) -> str:
    if package == "torchvision":
        import torch

        base = torch.__version__.split("+")[0]
        return (f"pip install torchvision, the release built for your torch {torch.__version__} (pin torch so pip "
                f"does not replace it: pip install 'torch=={base}' torchvision, with the same --index-url you "
                "installed torch from)")
    return f"pip install {package}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _tokenizer_alone(folder: Path) -> tuple[Any, str | None]:
    """(the checkpoint's tokenizer or None, why it failed or None)."""
    if not has_files(folder, TOKENIZER_FILES):
        return None, None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder)), None
    except Exception as err:  # reported in the stand-in's message; marker ids then come from the files (marker_vocab)
        return None, f"{type(err).__name__}: {_first_line(err)}"


def _saved_settings(folder: Path) -> dict[str, str]:
    """String entries of processor_config.json: what the processor would have had as attributes (token names)."""
    try:
        data = json.loads((folder / "processor_config.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}


class FileVocab:
    """Token string -> id read straight from tokenizer.json / tokenizer_config.json (no tokenizer class needed)."""

    unk_token_id = None

    def __init__(self, vocab: dict[str, int]):
        self.vocab = vocab

    @classmethod
    def from_folder(cls, folder: Path) -> "FileVocab | None":
        vocab: dict[str, int] = {}
        for name in ("tokenizer.json", "tokenizer_config.json"):
            try:
                data = json.loads((folder / name).read_text())
            except (OSError, ValueError):
                continue
            model_vocab = data.get("model", {}).get("vocab") if isinstance(data.get("model"), dict) else None
            if isinstance(model_vocab, dict):
                vocab.update({k: int(v) for k, v in model_vocab.items()})
            elif isinstance(model_vocab, list):  # Unigram: [[piece, score], ...], the id is the index
                vocab.update({entry[0]: i for i, entry in enumerate(model_vocab)})
            for entry in data.get("added_tokens", []):
                vocab[entry["content"]] = int(entry["id"])
            for tid, entry in (data.get("added_tokens_decoder") or {}).items():
                vocab[entry["content"]] = int(tid)
        return cls(vocab) if vocab else None

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self.vocab.get(token)


def marker_vocab(processor: Any) -> Any:
    """What to look marker token ids up in: the processor (or its tokenizer) as is; for a failed processor its
    tokenizer, else the tokenizer files read directly. Raises when the files exist and none of that works."""
    if not isinstance(processor, UnavailableProcessor):
        return processor
    if processor.tokenizer is not None:
        return processor.tokenizer
    if processor.reason == "none":
        return None
    vocab = FileVocab.from_folder(processor.folder)
    if vocab is None:
        raise ProcessorUnavailableError(
            f"{processor.message()}. The tokenizer files could not be read either, and this family's span marker ids "
            "(e.g. begin/end-of-image) live only there. Fix the processor files, or load with processor=None to "
            "go on without those spans"
        ) from processor.error
    return vocab
