"""Sparse autoencoders on a VLM: a SAELens SAE spliced at a hook of toy-llava, its features drawn on the image.

Needs sae-lens (``pip install 'hooked_vlm[sae]'``, a venv with transformer-lens 3.9). Runs on the shipped
toy in well under a minute on CPU. The SAE is the shipped ``toy-llava-sae`` when the package has one
(``hooked-vlm train-sae``), otherwise a small one fitted here in a few seconds.
"""

import torch
from _setup import OUT
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from hooked_vlm import HookedVLM
from hooked_vlm.saes import load_sae, sae_feature_map, top_activating
from hooked_vlm.toy import TOY_DIR
from hooked_vlm.toy.data import GRID, make_scenes, prompt
from hooked_vlm.toy.tasks import ToyEncoder, accuracy, hooked_logits_fn

model = HookedVLM.from_pretrained("toy-llava")
scenes = make_scenes(96, seed=900)
fit_scenes, held_out = scenes[:32], scenes[64:]


def batch_inputs(scenes, kind="colour"):
    return model.prepare_inputs(images=[s.pil() for s in scenes], text=[prompt(kind)] * len(scenes))


# 1. An SAE in SAELens's format, loaded through SAELens (SAE.load_from_disk; SAE.from_pretrained for releases)
shipped = TOY_DIR / "toy-llava-sae"
if (shipped / "cfg.json").exists():
    sae = load_sae(shipped)
else:  # fit a small standard SAE on the image tokens of blocks.0.hook_resid_post (SAELens's encode/decode)
    hook = "blocks.0.hook_resid_post"
    _, cache = model.run_with_cache(**batch_inputs(fit_scenes), names_filter=[hook])
    x = cache[hook][cache.spans.mask("image")]  # [32 scenes * 36 patches, d_model]
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=model.cfg.d_model, d_sae=256, metadata=SAEMetadata(hook_name=hook)))
    with torch.enable_grad():
        opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
        for step in range(100):
            acts = sae.encode(x)
            loss = (sae.decode(acts) - x).pow(2).sum(-1).mean() + 3e-3 * (acts * sae.W_dec.norm(dim=-1)).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    sae.save_model(OUT / "toy_sae")  # cfg.json + sae_weights.safetensors
    sae = load_sae(OUT / "toy_sae")
HOOK = sae.cfg.metadata.hook_name
print(f"{type(sae).__name__} at {HOOK}: d_in {sae.cfg.d_in}, d_sae {sae.cfg.d_sae}")

# 2. Splicing. With the error term the forward is unchanged; without it the reconstruction flows on.
inputs = batch_inputs(held_out[:8])
plain = model(**inputs)
with_error = model.run_with_saes(inputs, saes=[sae], use_error_term=True)
print(f"max |logits with SAE + error term - plain| = {(with_error - plain).abs().max():.2e}")
only_image = model.run_with_saes(inputs, saes=[sae], spans="image")  # text positions keep their activations
_, cache = model.run_with_cache(**inputs, names_filter=[HOOK])
x = cache[HOOK][cache.spans.mask("image")]
x_hat = sae.decode(sae.encode(x))
print(f"fraction of variance unexplained at the image tokens: {((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()):.3f}")
encoder = ToyEncoder(model.processor)
base = accuracy(hooked_logits_fn(model), encoder, held_out, kinds=("colour", "shape"))
with model.saes([sae], spans="image"):  # every forward (and generate) in the block uses the SAE
    spliced = accuracy(hooked_logits_fn(model), encoder, held_out, kinds=("colour", "shape"))
print(f"held-out accuracy (%), plain {base} -> SAE spliced at the image tokens {spliced}")

# the SAE's own hook points are in the model's cache, under the hook's name
_, cache = model.run_with_cache_with_saes(inputs, saes=[sae], use_error_term=True,
                                          names_filter=lambda n: ".hook_sae_" in n)
print(sorted(cache.cache_dict))
acts = cache[f"{HOOK}.hook_sae_acts_post"]  # [batch, pos, d_sae]

# 3. One feature on the image: the one most active on the first scene's object
scene = held_out[0]
fmap = sae_feature_map(model, sae, batch_inputs([scene]))  # every feature, every position
obj = torch.tensor(scene.object_patches(0))
grids = torch.stack([fmap.to_grid(f) for f in range(sae.cfg.d_sae)]).flatten(1)  # [d_sae, rows * cols]
feature = int(grids[:, obj].mean(1).argmax())
print(f"feature {feature}: mean {grids[feature, obj].mean():.3f} on the {scene.objects[0].colour} "
      f"{scene.objects[0].shape}'s {len(obj)} patches, {grids[feature].mean():.3f} over all {GRID * GRID}")
one = sae_feature_map(model, sae, batch_inputs([scene]), feature=feature)
one.plot(scene.pil()).savefig(OUT / "sae_feature_map.png")

# 4. Where in a dataset does it fire most? (batched, with a progress bar; one patch per image)
data = [(s.pil(), prompt("colour")) for s in held_out]
top = top_activating(model, sae, data, feature=feature, k=8, batch_size=8)
print(top.to_dataframe()[["example", "row", "col", "activation"]])
print("top images:", [f"{held_out[i].objects[0].colour} {held_out[i].objects[0].shape}" for i in top.examples.tolist()])
top.plot(ncols=4).savefig(OUT / "sae_top_activating.png")
