"""Experiments over the model: property tasks, the resumable benchmark grid, cross-validation and summaries."""
