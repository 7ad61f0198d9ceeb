"""Find the gate: the image-region position text reads most, and whose knockout hurts most."""

from _setup import dataset, tiny_model

from hooked_vlm.analysis import find_gate

model = tiny_model()
gate = find_gate(model, dataset(4), knockout_top=4, progress=False)
print(gate.head(8).round(4))
best = gate.iloc[0]
print(f"top candidate: offset {best.offset} ({best.role}), attention share {best.attention_share:.3f}")
