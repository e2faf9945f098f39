"""Shared model building blocks: layers, the MaskFormer and text towers, the UperNet head."""
