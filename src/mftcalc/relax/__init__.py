"""Batched structure relaxation: the in-flight batch engine, its optimizers and the CPU worker pool."""
