"""`pretrained`: a Hugging Face encoder (BERT family) fine-tuned with a classification head.

Same contract as the other architectures, forward(ids, lengths) -> logits: the attention
mask comes from the lengths, so training, evaluation, export and the parity checks treat
it like any other model. The ids are the model's own tokenizer's (see pipeline/pretrained_text.py),
[CLS] ... [SEP] included.

Built from `model.pretrained.source` for training (the pretrained weights), or from the
encoder's config dict stored in the checkpoint (`encoder_config`), so that evaluate and
export rebuild it from best.pt alone, without the source folder or the Hub.
transformers is imported here only, and only when this architecture is picked.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import torch
from torch import nn

from pipeline.errors import PipelineError, clip, first_line
from pipeline.models.masks import masked_mean, padding_mask
from pipeline.params import ModelParams
from pipeline.text.subwords import model_folder


def _transformers():
    try:
        import transformers
    except ImportError:
        raise PipelineError(
            "model.arch pretrained needs the transformers package: pip install -e '.[pretrained]' (or pick another model.arch)"
        ) from None
    transformers.utils.logging.disable_progress_bar()  # a bar per weight load would clutter the stage's output
    return transformers


class Pretrained(nn.Module):
    """The encoder's token states, pooled (masked mean, or the first token's state for `cls`),
    then dropout and a linear layer."""

    def __init__(self, vocab_size: int, num_classes: int, config: ModelParams, encoder_config: dict[str, Any] | None = None):
        super().__init__()
        transformers = _transformers()
        if encoder_config is None:  # training: the pretrained weights
            folder = model_folder(config.pretrained)
            try:
                self.encoder = transformers.AutoModel.from_pretrained(str(folder))
            except (OSError, ValueError, KeyError) as exc:  # no weights, an unknown model type, a damaged file
                raise PipelineError(
                    f"model.pretrained.source: transformers cannot load a model from {folder} ({clip(first_line(exc), 200)}); "
                    "point it at a folder written by save_pretrained (config.json and model.safetensors)"
                ) from None
        else:  # a checkpoint: the architecture alone; its weights are loaded next
            settings = dict(encoder_config)
            self.encoder = transformers.AutoModel.from_config(transformers.AutoConfig.for_model(settings.pop("model_type"), **settings))
        if getattr(self.encoder, "pooler", None) is not None:
            # BERT's pooler (a dense layer on [CLS] for next-sentence prediction) is not used here: without it,
            # DDP finds no parameter without a gradient and best.pt carries no dead weights
            self.encoder.pooler = None
        hidden = self.encoder.config.hidden_size
        self.encoder_config = json.loads(self.encoder.config.to_json_string(use_diff=False))  # plain values: loads with weights_only
        self.pooling = config.pretrained.pooling
        self.max_positions = self.encoder.config.max_position_embeddings
        self.pad_id = self.encoder.config.pad_token_id or 0
        # BERT takes token types (all 0 for one text); DistilBERT has none
        self.token_types = "token_type_ids" in inspect.signature(self.encoder.forward).parameters
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(hidden, num_classes)
        if vocab_size > self.encoder.config.vocab_size:
            raise PipelineError(
                f"the tokenized data has {vocab_size:,} token ids but the model only {self.encoder.config.vocab_size:,}: "
                "data/processed was tokenized for another model; rerun the tokenize stage"
            )

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # One extra padding column, so that an empty batch (time 0) still has a position to attend to
        # (the encoder cannot reshape a time axis of 0); cut back to the position table's size. An empty
        # text attends to that one padding position: finite, if meaningless, like every other model.
        ids = nn.functional.pad(ids, (0, 1))[:, : self.max_positions]
        mask = padding_mask(ids, lengths.clamp(min=1))
        # the model's own pad id where we padded with 0 (RoBERTa derives positions from it)
        ids = ids.masked_fill(~mask, self.pad_id)
        inputs = {"input_ids": ids, "attention_mask": mask.long()}
        if self.token_types:
            inputs["token_type_ids"] = torch.zeros_like(ids)
        states = self.encoder(**inputs).last_hidden_state
        pooled = states[:, 0] if self.pooling == "cls" else masked_mean(states, mask)
        return self.classifier(self.dropout(pooled))
