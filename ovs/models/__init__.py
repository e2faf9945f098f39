"""Image and text towers of S-Seg."""
