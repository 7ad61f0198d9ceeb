"""HF's ``InternVLProcessor`` for images, constructible without torchvision.

``InternVLProcessor(image_processor, tokenizer, video_processor=None)`` fails before it starts when torchvision is
missing: ProcessorMixin checks the class of every argument, ``None`` included, and its lookup of the video processor
class raises (``VIDEO_PROCESSOR_MAPPING has no attribute '_extra_content'``). :class:`InternVLImageProcessor` skips
only that check for a missing video processor; everything else -- the tiling, the ``<img>`` + image tokens +
``</img>`` expansion, padding -- is HF's own code. :func:`load_internvl_processor` tries ``AutoProcessor`` first (it
works where torchvision is installed) and falls back to this class with the folder's tokenizer and image processor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import InternVLProcessor


class InternVLImageProcessor(InternVLProcessor):
    """HF's InternVLProcessor without a video processor (images, and the frames of a video passed as images)."""

    def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
        if argument_name == "video_processor" and argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> list[str]:
        """The files HF's processor writes for images: tokenizer, preprocessor_config.json, processor_config.json
        (ProcessorMixin.save_pretrained fails on the missing video processor)."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        files = list(self.tokenizer.save_pretrained(folder, **kwargs)) + list(self.image_processor.save_pretrained(folder))
        settings = folder / "processor_config.json"
        settings.write_text(json.dumps({"image_seq_length": self.image_seq_length,
                                        "processor_class": "InternVLProcessor"}, indent=2) + "\n")
        return files + [str(settings)]


def load_internvl_processor(folder: str) -> Any:
    """AutoProcessor when it loads; else HF's processor code with the folder's tokenizer + image processor (the
    tokenizer alone without preprocessor_config.json; None without a tokenizer)."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    path = Path(folder)
    if not ((path / "tokenizer_config.json").exists() or (path / "tokenizer.json").exists()):
        return None
    try:
        return AutoProcessor.from_pretrained(folder)
    except (AttributeError, ImportError, ValueError) as err:  # no torchvision for the video processor; anything else propagates
        if "_extra_content" not in str(err) and "torchvision" not in str(err):
            raise
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not (path / "preprocessor_config.json").exists():
        return tokenizer
    settings_file = path / "processor_config.json"
    settings = json.loads(settings_file.read_text()) if settings_file.exists() else {}
    kwargs = {"image_seq_length": settings["image_seq_length"]} if "image_seq_length" in settings else {}
    return InternVLImageProcessor(image_processor=AutoImageProcessor.from_pretrained(folder), tokenizer=tokenizer,
                                  **kwargs)
