"""Modality separation and neighbourhood overlap per layer (Narrow Gate secs. 1 and 3)."""

from _setup import dataset, tiny_model

from hooked_vlm.analysis import label_overlap, modality_separation

model = tiny_model()
data = dataset(8)
sep = modality_separation(model, data, n_tokens=2, progress=False)
print(sep.round(3))

labels = [i % 2 for i in range(len(data))]  # e.g. ImageNet classes of the images
print(label_overlap(model, data, labels, k=3, progress=False).round(3))
