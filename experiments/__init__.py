"""Research experiments run on the shipped toy models, apart from the library.

Each one imports :mod:`hooked_vlm` as any user would and is one command, run from the repository root:

* ``python -m experiments.gate_experiment``: the narrow-gate hypothesis under control (two native toys that differ
  only in the training objective; knockouts, EOI attention share, EOI patching, logit lens, label overlap);
* ``python -m experiments.separation``: modality separation per layer across the shipped toys;
* ``python -m experiments.compare_recipes``: toy LLaVA checkpoints (e.g. the shipped recipe vs the LLaVA-way
  recipe) side by side on the known effects;
* ``python -m experiments.toy_transcoders``: what the attribution graphs of ``toy-llava-transcoders`` show;
* ``python -m experiments.toy_sae_features``: what the toy LLaVA's SAE learned, against the scenes' ground truth.

The toys, their data generator and their training stay in the package (:mod:`hooked_vlm.toy`); the toy effects the
``hooked-vlm demo`` report shows are :mod:`hooked_vlm.demo`. The paper reproductions on real checkpoints are the
scripts of ``docs/reproduce/``. None of this folder is in the wheel (``setup.py`` packages ``hooked_vlm`` and
``converters`` only). Tests: ``tests/test_gate_experiment.py``, ``tests/test_toy_separation.py``,
``tests/test_compare_recipes.py``, ``tests/test_transcoder_train.py``, ``tests/test_toy_sae.py``.
"""
