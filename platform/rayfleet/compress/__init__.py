"""`rayfleet compress`: smaller checkpoints of a trained run that serve like any other.

- `methods`: which methods exist and which layers each one rewrites (pure; no torch).
- `lineage`: the document a compressed checkpoint's manifest carries (source, sha256, method).
- `transform`: the torch side, applying a method to a model and rebuilding its structure.
- `job`: resolve the source, compress, evaluate and write the new verified checkpoint.
- `distill`: `--method distill`, a smaller student of the same recipe trained on the teacher's
  soft labels as a TrainJob (the loop side is `train.recipes.distill`), its lineage stamped.
"""
