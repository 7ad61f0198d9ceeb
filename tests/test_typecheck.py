"""Type annotations (jaxtyping shapes/dtypes and plain ones) hold at run time, checked by beartype, package-wide.

In a subprocess (the rest of the suite keeps unchecked code), jaxtyping's import hook with beartype is
installed *before any* hooked_vlm / converters import and stays installed, so modules imported later
(lazily, or through importlib: converters, vision towers, pipelines, loading, generation) are checked too;
every module of both packages is then imported. Under it, the tiny models of every family run forward,
run_with_cache (+ spans), generate and two analyses. Coverage is proven twice: every function and method
defined in every module carries the checker (``__wrapped__`` chain), and a deliberately wrong call into
each of the named modules raises beartype's BeartypeCallHintParamViolation naming the wrong parameter.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import sys, warnings
    sys.path.insert(0, {root!r})
    warnings.filterwarnings("ignore")
    assert not any(m.split(".")[0] in ("hooked_vlm", "converters") for m in sys.modules)
    from jaxtyping import install_import_hook
    install_import_hook(["hooked_vlm", "converters"], "beartype.beartype")  # never uninstalled: lazy imports too

    import importlib, inspect, pkgutil
    import torch
    from beartype.roar import BeartypeCallHintParamViolation
    import hooked_vlm, converters

    modules = {{}}
    for pkg in (hooked_vlm, converters):
        modules[pkg.__name__] = pkg
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            modules[info.name] = importlib.import_module(info.name)

    def checked(fn):  # jaxtyped(typechecker=beartype) wraps the function; beartype wraps it once more
        return getattr(fn, "__wrapped__", None) is not None

    def written_here(fn, mod):  # not generated (dataclass __eq__) nor inherited
        return inspect.isfunction(fn) and fn.__code__.co_filename == mod.__file__

    unchecked, n_checked = [], 0
    for name, mod in modules.items():
        for attr, obj in vars(mod).items():
            if getattr(obj, "__module__", None) != name:
                continue
            fns = [(attr, obj)] if inspect.isfunction(obj) else [
                (f"{{attr}}.{{k}}", getattr(v, "fget", v)) for k, v in vars(obj).items()] if inspect.isclass(obj) else []
            for label, fn in fns:
                if checked(fn):
                    n_checked += 1
                elif written_here(fn, mod):
                    unchecked.append(f"{{name}}.{{label}}")
    assert not unchecked, f"functions without the run-time checker: {{unchecked}}"
    for needed in ("hooked_vlm.components.qwen_vision", "hooked_vlm.pipelines.qwen_vl", "hooked_vlm.loading",
                   "hooked_vlm.generation", "converters.llava", "converters.base", "hooked_vlm.analysis.knockout"):
        assert needed in modules, needed
    print("MODULES", len(modules), "CHECKED", n_checked)

    from hooked_vlm import HookedVLM
    from hooked_vlm.analysis import knockout_hooks
    from hooked_vlm.analysis.logit_lens import logit_lens
    from tests import tiny, tiny_native as tn, tiny_next_pixtral as tnp, tiny_qwen_idefics as tq
    from tests import tiny_gemma3 as tg3, tiny_qwen3vl as tq3, tiny_internvl as tiv, tiny_idefics2 as ti2
    from tests import tiny_paligemma as tpg, tiny_llava_like as tll, tiny_cohere as tco
    from tests import tiny_qwen35 as tq35, tiny_lfm2vl as tlv, tiny_mllama as tml, tiny_gemma4 as tg4, tiny_glm4v as tgl
    from tests import tiny_llama4 as tl4
    from tests import tiny_ovis2 as tov
    from tests import tiny_exaone45 as tex, tiny_hunyuanvl as thy
    from tests import tiny_sam as tsam
    from tests import tiny_molmo2 as tm2

    def built(factory):  # a cached tests/tiny*.py factory -> a case (folder, hf, inputs)
        def case():
            b = factory()
            return b.folder, b.hf, b.inputs
        return case

    def llava_case():
        folder, hf = tiny.make_llava()
        return folder, hf, tiny.llava_batch(hf, [1, 2], [2, 0])

    cases = {{"llava": llava_case, "llava_next": tnp.next_case, "onevision": tnp.onevision_case,
              "pixtral": tnp.pixtral_case, "mistral3": tnp.mistral3_case, "qwen2": lambda: tq.qwen_case("2"),
              "qwen2.5": lambda: tq.qwen_case("2.5"), "idefics3": lambda: tq.idefics_case("idefics3"),
              "chameleon": tn.chameleon_case, "emu3": tn.emu3_case, "janus": tn.janus_case,
              "smolvlm": lambda: tq.idefics_case("smolvlm"), "gemma3": tg3.gemma3_case,
              "qwen3vl": built(tq3.qwen3vl), "qwen3vl_moe": built(lambda: tq3.qwen3vl(moe=True)),
              "internvl": built(tiv.internvl), "idefics2": ti2.idefics2_case, "paligemma": tpg.paligemma_case,
              "vipllava": built(tll.vipllava), "granite_vision": built(tll.granite_vision),
              "lighton_ocr": built(tll.lighton_ocr), "llava_next_video": built(tll.llava_next_video),
              "deepseek_vl": built(tll.deepseek_vl), "deepseek_vl_hybrid": built(tsam.deepseek_vl_hybrid),
              "got_ocr2": built(tsam.got_ocr2),
              "aya_vision": built(tco.aya), "cohere2_vision": built(tco.cohere2_vision),
              "qwen3_5": built(tq35.qwen35), "qwen3_5_moe": built(lambda: tq35.qwen35(moe=True)),
              "lfm2_vl": built(tlv.lfm2vl), "mllama": built(tml.mllama),
              "gemma4": built(lambda: tg4.gemma4("k_eq_v_moe")),
              "glm4v": built(tgl.glm4v), "glm4v_moe": built(tgl.glm4v_moe), "glm46v": built(tgl.glm46v),
              "ovis2": built(tov.ovis2),
              "exaone4_5": built(tex.exaone45), "hunyuan_vl": built(thy.hunyuanvl),
              "llama4": built(tl4.llama4_vlm), "molmo2": built(tm2.molmo2)}}
    models = {{}}
    for fam, case in cases.items():
        folder, hf, inputs = case()
        model = HookedVLM.from_pretrained(str(folder), processor=None)
        with torch.no_grad():
            logits = model(**inputs)
            _, cache = model.run_with_cache(**inputs, names_filter=lambda n: "hook_resid" in n or n == "ln_final.hook_normalized")
            assert cache.spans.positions("image", 0).numel() > 0
            model.generate(**inputs, max_new_tokens=2, return_type="tokens")
            # Mllama: the image is in the cross-attention keys (layers 1, 3), not at positions: a text -> last knockout
            src, layers = ("text", [0]) if fam == "mllama" else ("image", [1])
            model.run_with_hooks(**inputs, fwd_hooks=knockout_hooks(model, src, "last", layers=layers))
            logit_lens(model, cache=cache)
        assert logits.shape[-1] == model.cfg.d_vocab and model.W_U.shape[1] == model.cfg.d_vocab
        models[fam] = (model, inputs)
        print("RAN", fam, model.cfg.architecture)

    from jaxtyping import TypeCheckError

    # call() must fail the check of fn_name's parameter param: jaxtyping's TypeCheckError naming the function,
    # raised from beartype's BeartypeCallHintParamViolation naming the parameter
    def violation(fn_name, param, call):
        try:
            call()
        except TypeCheckError as err:
            cause = err.__cause__
            while cause is not None and not isinstance(cause, BeartypeCallHintParamViolation):
                cause = cause.__cause__ or cause.__context__
            assert cause is not None, (fn_name, "no beartype violation behind", str(err)[:500])
            assert f"parameter {{param}}=" in str(cause), (fn_name, param, str(cause)[:500])
            assert f"checking the parameters of {{fn_name}}." in str(err), (fn_name, str(err)[:300])
            print("VIOLATION", fn_name, param)
            return
        raise AssertionError(f"{{fn_name}}: a wrong {{param}} passed the checker")

    llava, llava_inputs = models["llava"]
    from hooked_vlm.components import qwen_vision
    from hooked_vlm.pipelines import PIPELINES
    from hooked_vlm import loading, generation, positions, spans
    violation("hooked_vlm.components.qwen_vision.patch_positions", "grid_thw",
              lambda: qwen_vision.patch_positions("1 4 6", 2))
    violation("hooked_vlm.spans.build_spans", "input_ids",
              lambda: spans.build_spans(llava_inputs["input_ids"].float(), None, llava.cfg.roles, []))
    violation("hooked_vlm.positions.rope_index", "image_grid_thw",
              lambda: positions.rope_index(torch.zeros(1, 4, dtype=torch.long), None, torch.zeros(1, 4, dtype=torch.bool),
                                           torch.zeros(2, 4, dtype=torch.long), 2))
    for pipeline in PIPELINES.values():
        violation(f"{{pipeline.__module__}}.{{pipeline.__name__}}", "pixel_values", lambda: pipeline(llava, "pixels", {{}}))
    violation("hooked_vlm.loading.resolve_checkpoint", "name_or_path", lambda: loading.resolve_checkpoint(123))
    violation("hooked_vlm.generation.generate", "max_new_tokens",
              lambda: generation.generate(llava, llava_inputs, max_new_tokens="2"))
    violation("converters.base.check_fields", "handled", lambda: converters.base.check_fields(object(), 5, "here"))
    for name in converters.FAMILY_MODULES:
        keymap = modules[name].CONVERTER.make_keymap
        violation(f"{{keymap.__module__}}.{{keymap.__qualname__}}", "cfg", lambda: keymap("not a config"))
    print("TYPECHECK OK")
    """
)


def test_annotations_hold_at_run_time_package_wide():
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(root=str(ROOT))], capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert "TYPECHECK OK" in out.stdout, out.stdout[-3000:] + out.stderr[-5000:]
    ran = [line.split()[2] for line in out.stdout.splitlines() if line.startswith("RAN ")]
    from converters import supported_architectures

    assert sorted(set(ran)) == supported_architectures(), ran  # every family runs under the checker
    violations = [line for line in out.stdout.splitlines() if line.startswith("VIOLATION ")]
    # 3 functions + every pipeline + loading, generation, converters.base + every converter family module
    from converters import FAMILY_MODULES
    from hooked_vlm.pipelines import PIPELINES

    assert len(violations) == 3 + len(PIPELINES) + 3 + len(FAMILY_MODULES), violations
