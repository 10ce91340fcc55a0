"""The training loop's parts: device and precision, the batch loader, the checkpoint format,
the per-architecture recipe, schedule and optimizers, early stopping, curves and console,
distributed training. Everything here may import torch."""
