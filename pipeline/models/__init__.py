"""The architectures behind one interface: forward(ids, lengths) -> logits, one module each.

ids: int64 (batch, time), right-padded with 0 (<pad>); lengths: int64 (batch,).
Every model gives finite logits for any input, an empty text (length 0) included.
Only plain tensor ops are used so that every model exports to ONNX. `pretrained` wraps a
Hugging Face encoder; transformers is imported only when that architecture is built.
"""

from __future__ import annotations

from torch import nn

from pipeline.models.bag import Bag
from pipeline.models.cnn import TextCNN
from pipeline.models.lstm import BiLSTM
from pipeline.models.masks import masked_mean, padding_mask
from pipeline.models.pretrained import Pretrained
from pipeline.models.transformer import Transformer
from pipeline.params import ModelParams

__all__ = ["ARCHITECTURES", "build_model", "masked_mean", "padding_mask"]

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "bag": Bag, "cnn": TextCNN, "lstm": BiLSTM, "transformer": Transformer, "pretrained": Pretrained,
}


def build_model(config: ModelParams, vocab_size: int, num_classes: int, encoder_config: dict | None = None) -> nn.Module:
    """A fresh model; for `pretrained`, with the source's weights, or with the architecture in
    `encoder_config` (from a checkpoint, whose weights are then loaded)."""
    if config.arch == "pretrained":
        return Pretrained(vocab_size, num_classes, config, encoder_config)
    return ARCHITECTURES[config.arch](vocab_size, num_classes, config)
