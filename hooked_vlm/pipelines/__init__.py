"""Image pipelines: pixel inputs -> image embeddings + the patch layout of every image.

A pipeline is chosen by ``cfg.extra["image_pipeline"]`` (a config field, never a family name).
Each family module registers its pipeline with :func:`register_pipeline`, with a function giving the image layouts
from the inputs alone (the spans are built from them before the tower runs); importing this package
imports them all. Adding a pipeline = one module here + one import line below.
"""

from .base import LAYOUTS, PIPELINES, register_pipeline  # noqa: F401
from . import vit_mlp  # noqa: F401,E402
from . import qwen_vl  # noqa: F401,E402
from . import idefics3  # noqa: F401,E402
from . import anyres  # noqa: F401,E402
from . import pixtral  # noqa: F401,E402
from . import vq_tokens  # noqa: F401,E402
from . import pooled  # noqa: F401,E402
from . import qwen3_vl  # noqa: F401,E402
from . import tiles  # noqa: F401,E402
from . import resampled  # noqa: F401,E402
from . import naflex  # noqa: F401,E402
from . import cross_tiles  # noqa: F401,E402
from . import gemma4  # noqa: F401,E402
from . import thumbnail_grid  # noqa: F401,E402
from . import grid_rows  # noqa: F401,E402
from . import sam  # noqa: F401,E402
from . import pooled_windows  # noqa: F401,E402
