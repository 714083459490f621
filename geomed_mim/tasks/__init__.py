"""Lightning training tasks (pretraining) and their helpers."""
