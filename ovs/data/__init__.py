"""Data readers and augmentation."""
