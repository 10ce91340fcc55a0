"""`cnn`: Kim (2014) TextCNN."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.masks import padding_mask
from pipeline.params import ModelParams


class TextCNN(nn.Module):
    """Kim (2014): convolutions of several widths, max over time, dropout, linear."""

    def __init__(self, vocab_size: int, num_classes: int, config: ModelParams):
        super().__init__()
        self.widths = config.cnn.widths
        self.embedding = nn.Embedding(vocab_size, config.embed_dim, padding_idx=0)
        self.convs = nn.ModuleList(nn.Conv1d(config.embed_dim, config.cnn.filters, w) for w in self.widths)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.cnn.filters * len(self.widths), num_classes)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # Every window that starts on a token must exist whatever the batch's padding, so pad
        # by the widest filter; <pad> embeds to zeros. An empty text keeps the window at 0.
        widest = max(self.widths)
        ids = nn.functional.pad(ids, (0, max(widest - 1, widest - ids.shape[1])))
        x = self.embedding(ids).transpose(1, 2)
        starts = padding_mask(ids, lengths.clamp(min=1))
        pooled = []
        for conv in self.convs:
            h = torch.relu(conv(x))
            pooled.append(h.masked_fill(~starts[:, : h.shape[2]].unsqueeze(1), float("-inf")).amax(2))
        return self.classifier(self.dropout(torch.cat(pooled, 1)))
