"""`rayfleet evaluate`: a verified checkpoint scored on a dataset split with scikit-learn's
metrics, the result stored beside the checkpoint (evaluation.json and two PNGs).

- `metrics`: the scores from labels and class probabilities (numpy and scikit-learn only);
- `document`: the typed evaluation.json;
- `source`: which checkpoint and dataset an evaluation means (verified, shapes matched);
- `runner`: load the model, run the split in batches, plot, store, attach to MLflow.
"""
