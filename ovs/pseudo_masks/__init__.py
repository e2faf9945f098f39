"""Pseudo-masks (S-Seg): dense features, their runtimes, device decode, K-means, the masker."""
