# One command to set up and run the demo, one to set up and run the tests (see README).
# `make test-min` runs the same suite in a second venv with the lowest versions setup.py allows.
# `make docs` builds the documentation site (mkdocs.yml) into site/ with --strict, offline, and checks its API reference.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat setup.py constraints.txt | cksum | cut -d' ' -f1)
MIN_VENV ?= .venv-min
MIN_PY := $(MIN_VENV)/bin/python
MIN_STAMP := $(MIN_VENV)/.installed-$(shell cat setup.py constraints-min.txt | cksum | cut -d' ' -f1)

.PHONY: install install-min demo test test-min docs bench clean

# A stamp named after the checksum of setup.py and the venv's constraints file: editing either
# re-installs. `pip check` fails the install (and so CI) on a broken resolver state.
$(STAMP): setup.py constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, CPU build, exact version: a bare `torch` requirement would pull a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,docs]"
	$(PY) -m pip check
	rm -f $(VENV)/.installed-*; touch $(STAMP)

# Lowest bounds: transformers 5.20.0, transformer-lens 3.9.0 (via sae-lens), huggingface_hub 1.31.0,
# safetensors 0.8.0, plus the sae and dadapy extras (dadapy needs numpy<2, so only this venv has it).
$(MIN_STAMP): setup.py constraints-min.txt
	test -x $(MIN_PY) || python3 -m venv $(MIN_VENV)
	$(MIN_PY) -m pip install -q torch==2.13.0
	$(MIN_PY) -m pip install -q -c constraints-min.txt -e ".[dev,sae,dadapy]"
	$(MIN_PY) -m pip check
	# pip check reads metadata only; a package that refuses its neighbours at import (pyarrow 26 with numpy 1) fails here
	$(MIN_PY) -c "import dadapy, sae_lens, transformer_lens, transformers, hooked_vlm"
	rm -f $(MIN_VENV)/.installed-*; touch $(MIN_STAMP)

install: $(STAMP)

install-min: $(MIN_STAMP)

demo: $(STAMP)
	$(VENV)/bin/hooked-vlm demo --out demo_report

test: $(STAMP)
	$(PY) -m pytest -q tests

test-min: $(MIN_STAMP)
	$(MIN_PY) -m pytest -q tests

# --strict: a broken link or anchor, an unresolved cross-reference or a docstring mkdocstrings cannot read fails the
# build. Then every name of the four public __all__s must be in the built API reference (site/objects.inv).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site  # (the variable: no end-of-life banner of mkdocs-material)
	$(PY) .ci/check_docs_api.py site/objects.inv

bench: $(STAMP)
	$(PY) benchmarks/bench_core.py

# `make wheel`: sdist + wheel into dist/ (setuptools from the pinned dev venv, no isolated build env).
# `make test-wheel`: install that wheel as a user would (not editable) into a fresh venv outside the checkout,
# torch first then the wheel with the pinned stack, and smoke-test it there (.ci/wheel_smoke.py).
.PHONY: wheel test-wheel

wheel: $(STAMP)
	rm -rf dist build hooked_vlm.egg-info  # a stale egg-info SOURCES.txt would hide a missing package_data entry
	$(PY) -m build --no-isolation --quiet --outdir dist .
	$(PY) .ci/wheel_smoke.py contents dist/hooked_vlm-*.whl dist/hooked_vlm-*.tar.gz

test-wheel: wheel
	set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; t0=$$(date +%s); \
	python3 -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install -q --no-compile torch==2.13.0; \
	"$$tmp/venv/bin/python" -m pip install -q --no-compile -c "$(CURDIR)/constraints.txt" "$(CURDIR)"/dist/hooked_vlm-*.whl; \
	"$$tmp/venv/bin/python" -m pip check; \
	echo "test-wheel: fresh venv installed in $$(( $$(date +%s) - t0 )) s"; \
	cp .ci/wheel_smoke.py "$$tmp/"; \
	cd "$$tmp" && "$$tmp/venv/bin/python" wheel_smoke.py installed "$$tmp/demo"; \
	echo "test-wheel: passed in $$(( $$(date +%s) - t0 )) s (after the build)"

clean:
	rm -rf $(VENV) $(MIN_VENV) demo_report site
