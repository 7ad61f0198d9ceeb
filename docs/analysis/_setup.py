"""Shared setup of the examples: a tiny random LLaVA (built offline in seconds) and an output folder.

On a real checkpoint replace ``tiny_model()`` by e.g.
``HookedVLM.from_pretrained("llava-hf/llava-1.5-7b-hf", dtype=torch.float16, device="cuda")`` and the
prompts by the model's chat format; nothing else changes.
"""

import os
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.tiny_analysis import model_and_hf, random_image  # noqa: E402

OUT = Path(os.environ.get("HOOKED_VLM_EXAMPLES_OUT", tempfile.mkdtemp(prefix="hooked_vlm_examples_")))
OUT.mkdir(parents=True, exist_ok=True)


def tiny_model():
    """The tiny model has begin/end-of-image markers <boi>/<eoi> around each image, like Chameleon/Emu3."""
    return model_and_hf()[0]


def prompt(question: str = "what colour is this ?") -> str:
    return f"<s> USER: <boi> <image> <eoi> {question} ASSISTANT: It is"


def dataset(n: int = 6):
    """(image, prompt) pairs."""
    questions = ["what colour is this ?", "what shape is this ?", "what is the colour ?"]
    return [(random_image(i), prompt(questions[i % len(questions)])) for i in range(n)]
