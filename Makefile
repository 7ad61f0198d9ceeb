# One command to set up and run the demo, one to set up and run the tests (see README).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat setup.py constraints.txt | cksum | cut -d' ' -f1)

.PHONY: install demo test bench clean

$(STAMP): setup.py constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, CPU build, exact version: a bare `torch` requirement would pull a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	rm -f $(VENV)/.installed-*; touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hooked-vlm demo --out demo_report

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) benchmarks/bench_core.py

clean:
	rm -rf $(VENV) demo_report
