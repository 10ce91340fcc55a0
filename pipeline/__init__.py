"""A reproducible text-classification pipeline built on PyTorch and DVC."""

__version__ = "0.1.0"
