import re
from pathlib import Path

from setuptools import find_packages, setup

# dev: executing the notebooks in tests (nbclient, nbformat, ipykernel) and `make wheel` (build, setuptools)
NOTEBOOK_AND_BUILD_TOOLS = ["nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29", "build>=1.2", "setuptools>=70.1"]
# docs: the documentation site (`make docs`: mkdocs.yml); exact versions in constraints.txt
DOCS_TOOLS = ["mkdocs>=1.6.1", "mkdocs-material>=9.8.1", "mkdocstrings>=1.0.8", "mkdocstrings-python>=2.0.11"]
# dev: the view tests drive the system's Chromium (Debian `chromium`) with Playwright; its own browser download is never used
BROWSER_TESTS = ["playwright>=1.65"]

setup(
    name="hooked_vlm",
    # one source for the version: hooked_vlm.__version__ (what `hooked-vlm --version` prints)
    version=re.search(r'^__version__ = "([^"]+)"', Path(__file__).with_name("hooked_vlm").joinpath("__init__.py")
                      .read_text(encoding="utf-8"), re.M).group(1),
    description="TransformerLens-style hooks, token spans and interpretability analyses for vision-language models",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # No license is declared: the repository has no license file or terms yet. No project URLs either:
    # the project has no confirmed public address (install from a wheel or a clone, see README).
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    keywords=["interpretability", "vision-language models", "transformer-lens", "hooks", "llava", "chameleon"],
    packages=find_packages(include=["hooked_vlm", "hooked_vlm.*", "converters", "converters.*"]),
    package_data={"hooked_vlm": ["toy/checkpoints/*/*", "toy/checkpoints/*/*/*", "viz/assets/*.js", "viz/assets/*.css"]},
    include_package_data=True,
    # Loose ranges for Colab; CI pins exact versions with constraints.txt (newest) and tests the lower
    # bounds of transformers, transformer-lens, huggingface_hub and safetensors with constraints-min.txt
    # (`make test-min`). torch: only 2.13.0 (CPU) is tested; >=2.6 is what transformer-lens asks for.
    install_requires=[
        "torch>=2.6",
        "accelerate>=1.15",  # device maps and offload (hooked_vlm.devices); the lowest version tested
        "transformers>=5.20,<6",
        "transformer-lens>=3.9,<5",
        "safetensors>=0.8",
        "huggingface_hub>=1.31",
        "einops>=0.7",
        "fancy-einsum>=0.0.3",  # named einsums (hooked_vlm/analysis/attribution.py); TransformerLens needs it too
        "jaxtyping>=0.2.30",
        "tqdm>=4.60",
        "numpy>=1.24",
        "pillow>=9",
        "matplotlib>=3.7",
        "pandas>=2.0",
        "scikit-learn>=1.3",
    ],
    extras_require={
        "dev": ["pytest>=8", "beartype>=0.18", "hypothesis>=6.100", *NOTEBOOK_AND_BUILD_TOOLS, *BROWSER_TESTS],
        "docs": DOCS_TOOLS,
        # dadapy 0.3.4 pins numpy<2, jax==0.4.30, flax==0.8.5: not installable beside numpy 2.
        "dadapy": ["dadapy>=0.3.4"],
        # sae-lens 6.54 requires transformer-lens<4, so this extra resolves transformer-lens 3.9.
        "sae": ["sae-lens>=6.54"],
    },
    entry_points={"console_scripts": ["hooked-vlm = hooked_vlm.cli:main"]},
)
