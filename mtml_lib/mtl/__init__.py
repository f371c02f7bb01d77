"""Multi-task learning: loss weighting / gradient combination strategies and the trainer."""
