"""The architectures behind one interface: forward(ids, lengths) -> logits, one module each.

ids: int64 (batch, time), right-padded with 0 (<pad>); lengths: int64 (batch,).
Every model gives finite logits for any input, an empty text (length 0) included.
Only plain tensor ops are used so that every model exports to ONNX. `pretrained` wraps a
Hugging Face encoder; transformers is imported only when that architecture is built.
"""

from __future__ import annotations

from torch import nn

from pipeline.errors import PipelineError

from pipeline.models.bag import Bag
from pipeline.models.cnn import TextCNN
from pipeline.models.lstm import BiLSTM
from pipeline.models.masks import masked_mean, padding_mask
from pipeline.models.pretrained import Pretrained
from pipeline.models.transformer import Transformer
from pipeline.params import ModelParams

__all__ = ["ARCHITECTURES", "build_model", "check_fits", "masked_mean", "padding_mask"]

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "bag": Bag, "cnn": TextCNN, "lstm": BiLSTM, "transformer": Transformer, "pretrained": Pretrained,
}


def build_model(config: ModelParams, vocab_size: int, num_classes: int, encoder_config: dict | None = None) -> nn.Module:
    """A fresh model; for `pretrained`, with the source's weights, or with the architecture in
    `encoder_config` (from a checkpoint, whose weights are then loaded)."""
    if config.arch == "pretrained":
        return Pretrained(vocab_size, num_classes, config, encoder_config)
    return ARCHITECTURES[config.arch](vocab_size, num_classes, config)


def check_fits(config: ModelParams, max_tokens: int) -> None:
    """The architecture's params fit documents of up to `max_tokens` tokens (the tokenized
    data's tokenize.max_tokens, resolved); a PipelineError names the key to change otherwise."""
    if config.arch == "transformer" and config.transformer.max_positions < max_tokens:
        raise PipelineError(
            f"model.transformer.max_positions: {config.transformer.max_positions} is below tokenize.max_tokens ({max_tokens}): "
            "the model would silently cut longer documents; raise it or lower tokenize.max_tokens"
        )
    if config.arch == "cnn" and max(config.cnn.widths) > max_tokens:
        raise PipelineError(
            f"model.cnn.widths: {config.cnn.widths} has a width above tokenize.max_tokens ({max_tokens}): "
            "no document is that long; use narrower filters"
        )
