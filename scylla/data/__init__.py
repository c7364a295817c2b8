"""Evaluation prompt sets (scylla.data.tasks): held-out problems with their own scorers. Training corpora live in
train/data."""
