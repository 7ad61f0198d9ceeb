"""The SAE activation store: exactly the cached activations at the chosen roles, a seeded permutation when
shuffled, and a lossless round trip through sharded safetensors + the parquet index. No sae-lens needed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hooked_vlm.analysis import collate
from hooked_vlm.saes.shards import DiskActivationStore, read_activations, read_meta, write_activations, write_chunks
from hooked_vlm.saes.store import (INDEX_COLUMNS, ActivationChunk, ActivationStore, ShuffleBuffer, VLMActivationStore,
                                   batch_activations)
from tests import tiny
from tests import tiny_analysis as ta

HOOK = "blocks.1.hook_resid_post"
GRID_SIDE = 4  # tiny LLaVA: image 8, patch 2 -> a 4 x 4 grid, 16 image tokens


@pytest.fixture(scope="module")
def setup():
    model, hf = ta.model_and_hf()
    data = [ta.example(hf, s, text_after=t) for s, t in ((1, 2), (2, 6), (3, 4))]  # mixed lengths: left padding
    return model, data


def _store(model, data, hook=HOOK, spans=("image", "text"), **kw):
    kw = dict(model_batch_size=2, progress=False, n_epochs=1, shuffle=False, train_batch_size=5, buffer_size=10) | kw
    return VLMActivationStore(model, data, hook, spans, **kw)


def _by_hand(model, data, hook):
    """Rows of run_with_cache on the same batches, positions picked from the token ids (not from the spans)."""
    rows, keys = [], []
    for start in range(0, len(data), 2):
        batch = collate(model, data[start:start + 2])
        _, cache = model.run_with_cache(**batch, names_filter=hook)
        act = cache[hook].reshape(*batch["input_ids"].shape, -1)
        for b, (ids, real) in enumerate(zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist())):
            k = 0
            for p, (t, r) in enumerate(zip(ids, real)):
                if not r or t in (ta.BOI, ta.EOI):
                    continue
                is_image = t == tiny.IMAGE_TOKEN
                cell = (0, 0, k // GRID_SIDE, k % GRID_SIDE) if is_image else (-1, -1, -1, -1)
                k += is_image
                rows.append(act[b, p])
                keys.append((start + b, p, 0 if is_image else 1, *cell))
    return torch.stack(rows), keys


def _keys(chunk: ActivationChunk) -> list[tuple]:
    return list(zip(*(chunk.index[c].tolist() for c in INDEX_COLUMNS)))


def test_store_gives_the_cached_activations_at_the_chosen_roles(setup):
    model, data = setup
    for hook in (HOOK, "blocks.0.attn.hook_z"):  # hook_z: [batch, pos, head, d_head] flattened to head * d_head
        chunk = _store(model, data, hook).collect()
        want, keys = _by_hand(model, data, hook)
        assert _keys(chunk) == keys
        assert torch.equal(chunk.acts, want.float())
    assert chunk.acts.shape[1] == model.cfg.n_heads * model.cfg.d_head
    # one role only: the image rows, same numbers
    image = _store(model, data, spans="image").collect()
    want, keys = _by_hand(model, data, HOOK)
    is_image = torch.tensor([k[2] == 0 for k in keys])
    assert torch.equal(image.acts, want[is_image]) and image.roles == ("image",)
    assert set(image.frame().role) == {"image"} and (image.frame().grid_row >= 0).all()
    # the store cuts the forward after the hook's block: same numbers as the full run above
    assert _store(model, data).d_in == model.cfg.d_model


def test_store_refuses_what_it_cannot_read(setup):
    model, data = setup
    batch = collate(model, data[:1])
    with pytest.raises(ValueError, match="not one vector per position"):
        batch_activations(model, batch, "blocks.0.attn.hook_pattern", "image")
    with pytest.raises(ValueError, match="not \\[batch, pos, ...\\] over the merged sequence"):
        batch_activations(model, batch, "hook_image_embeds", "image")
    with pytest.raises(KeyError, match="no span named 'imag'"):
        batch_activations(model, batch, HOOK, "imag")
    with pytest.raises(KeyError, match="no hook point named"):
        VLMActivationStore(model, data, "blocks.1.hook_resid_pst")
    with pytest.raises(ValueError, match="lists a name twice"):
        VLMActivationStore(model, data, HOOK, ["image", "image"])
    with pytest.raises(ValueError, match="batch_size <= buffer_size"):
        VLMActivationStore(model, data, HOOK, train_batch_size=8, buffer_size=4)


def _numbered(n_rows: int, chunk: int, d: int = 3) -> list[ActivationChunk]:
    """Chunks whose row i holds the value i everywhere (and item = i), so every row is identifiable."""
    out = []
    for s in range(0, n_rows, chunk):
        idx = np.arange(s, min(s + chunk, n_rows))
        index = {c: idx.copy() if c == "item" else np.zeros(len(idx), dtype=np.int64) for c in INDEX_COLUMNS}
        out.append(ActivationChunk(torch.tensor(idx, dtype=torch.float32)[:, None].repeat(1, d), index, ("image",)))
    return out


class _ListStore(ActivationStore):
    hook_name, spans = "hook_embed", ("image",)

    def __init__(self, chunks, **kw):
        super().__init__(**kw)
        self._chunks, self.d_in = chunks, 3

    def epoch_chunks(self, epoch):
        return iter(self._chunks)


def test_shuffle_is_a_seeded_permutation():
    chunks = _numbered(1000, 70)
    batches = list(ShuffleBuffer(256, 32, seed=3).batches(chunks))
    order = torch.cat([b.acts[:, 0] for b in batches]).long()
    assert sorted(order.tolist()) == list(range(1000))  # every row exactly once
    assert all(len(b) == 32 for b in batches[:-1]) and len(batches[-1]) == 1000 % 32
    for b in batches:  # rows keep their origin through the shuffle
        assert np.array_equal(b.index["item"], b.acts[:, 0].long().numpy())
    assert not torch.equal(order, torch.arange(1000))
    assert abs(np.corrcoef(order.numpy(), np.arange(1000))[0, 1]) < 0.98  # mixed, not only locally jittered
    again = torch.cat([b.acts[:, 0] for b in ShuffleBuffer(256, 32, seed=3).batches(chunks)]).long()
    other = torch.cat([b.acts[:, 0] for b in ShuffleBuffer(256, 32, seed=4).batches(chunks)]).long()
    assert torch.equal(order, again) and not torch.equal(order, other)
    plain = torch.cat([b.acts[:, 0] for b in ShuffleBuffer(256, 32, shuffle=False).batches(chunks)]).long()
    assert torch.equal(plain, torch.arange(1000))
    # looping (SAELens's DataProvider): full batches only, epochs run into each other, each row once per epoch
    store = _ListStore(chunks, train_batch_size=48, buffer_size=192, seed=1)
    drawn = torch.cat([next(store)[:, 0] for _ in range(125)]).long()  # 6000 rows = 6 epochs
    assert all(next(store).shape == (48, 3) for _ in range(3))
    counts = torch.bincount(drawn, minlength=1000)
    assert int(counts.min()) >= 4 and int(counts.max()) <= 8 and int(counts.sum()) == 6000


def test_disk_shards_round_trip(setup, tmp_path):
    model, data = setup
    live = _store(model, data).collect()
    path = write_activations(model, data, HOOK, tmp_path / "acts", ["image", "text"], batch_size=2, shard_rows=17,
                             progress=False, model_name="tiny")
    meta = read_meta(path)
    assert [s["rows"] for s in meta["shards"]] == [17] * (len(live) // 17) + [len(live) % 17]
    assert meta["n_rows"] == len(live) and meta["d_in"] == model.cfg.d_model and meta["hook_name"] == HOOK
    acts, index = read_activations(path)
    assert torch.equal(acts, live.acts)
    assert index.equals(live.frame())
    assert list(index.role.unique()) == ["text", "image"]
    disk = DiskActivationStore(path, train_batch_size=5, buffer_size=10, shuffle=False, n_epochs=1).collect()
    assert torch.equal(disk.acts, live.acts) and _keys(disk) == _keys(live)
    shuffled = DiskActivationStore(path, train_batch_size=5, buffer_size=20, seed=2, n_epochs=1).collect()
    assert sorted(_keys(shuffled)) == sorted(_keys(live)) and _keys(shuffled) != _keys(live)
    by_key = {k: i for i, k in enumerate(_keys(live))}
    assert torch.equal(shuffled.acts, live.acts[[by_key[k] for k in _keys(shuffled)]])
    with pytest.raises(FileExistsError, match="not empty"):
        write_chunks([live], path, HOOK, ["image", "text"])
    import pyarrow.parquet as pq  # an index that does not match its shards is refused, not misread

    table = pq.read_table(path / "index.parquet")
    pq.write_table(table.slice(1), path / "index.parquet", row_group_size=17)
    with pytest.raises(ValueError, match="does not match"):
        read_activations(path)
