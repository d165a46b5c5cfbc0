"""Representation analysis: backbone features, Davies–Bouldin indices, Wasserstein drift, t-SNE plots."""
