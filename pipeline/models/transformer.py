"""`transformer`: a small pre-norm encoder trained from scratch."""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.models.masks import padding_mask
from pipeline.params import ModelParams


class Transformer(nn.Module):
    """Encoder with learned positions and a padding mask; a learned [CLS]-like summary token."""

    def __init__(self, vocab_size: int, num_classes: int, config: ModelParams):
        super().__init__()
        t = config.transformer
        self.max_positions = t.max_positions
        self.embedding = nn.Embedding(vocab_size, config.embed_dim, padding_idx=0)
        self.positions = nn.Embedding(t.max_positions + 1, config.embed_dim)
        self.summary = nn.Parameter(torch.zeros(1, 1, config.embed_dim))
        layer = nn.TransformerEncoderLayer(
            config.embed_dim, t.heads, t.ff_dim, config.dropout, batch_first=True, norm_first=True, activation="gelu"
        )
        self.encoder = nn.TransformerEncoder(layer, t.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.embed_dim)
        self.classifier = nn.Linear(config.embed_dim, num_classes)
        self.scale = math.sqrt(config.embed_dim)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        ids = ids[:, : self.max_positions]
        batch, time = ids.shape
        positions = torch.arange(time + 1, device=ids.device).unsqueeze(0)
        x = torch.cat([self.summary.expand(batch, -1, -1), self.embedding(ids) * self.scale], 1) + self.positions(positions)
        # the summary token is never masked, so even an empty text attends to something
        keep = torch.cat([torch.ones(batch, 1, dtype=torch.bool, device=ids.device), padding_mask(ids, lengths)], 1)
        h = self.encoder(x, src_key_padding_mask=~keep)
        return self.classifier(self.norm(h[:, 0]))
