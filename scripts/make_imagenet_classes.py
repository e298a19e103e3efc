"""Build src/mobilenets/data/labels/imagenet_classes.tsv: ``wnid<TAB>name`` for the 1000 classes.

Joined from the sorted wnid list and the 1001-line label list (line 0 = background) of
../shared/data/labels (Apache-2.0, google-coral/test_data). Row i = class i of a 1000-class
model = index i + 1 of the official 1001-class models.
"""

from pathlib import Path

root = Path(__file__).resolve().parents[1]
labels = root.parent / "shared" / "data" / "labels"
wnids = (labels / "imagenet_wnids.txt").read_text().split()
names = (labels / "imagenet_labels.txt").read_text().splitlines()
assert len(wnids) == 1000 and len(names) == 1001 and names[0] == "background"
out = root / "src" / "mobilenets" / "data" / "labels" / "imagenet_classes.tsv"
out.write_text("".join(f"{w}\t{n}\n" for w, n in zip(wnids, names[1:])))
print(f"wrote {out}")
