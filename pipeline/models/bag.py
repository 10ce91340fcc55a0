"""`bag`: fastText, the mean of word and hashed word n-gram embeddings."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.masks import masked_mean, padding_mask
from pipeline.params import ModelParams

# n-gram hash: a polynomial over token ids modulo the Mersenne prime 2^31 - 1, then one
# multiplicative scramble so that `% buckets` spreads n-grams evenly whatever `buckets` is.
# Every product stays below 2^63: no int64 overflow, the same result in torch and ONNX.
NGRAM_PRIME = 1_000_003
NGRAM_MODULUS = 2**31 - 1
NGRAM_SCRAMBLE = 48_271


class Bag(nn.Module):
    """fastText: the mean of token and hashed word n-gram embeddings, then a linear layer."""

    def __init__(self, vocab_size: int, num_classes: int, config: ModelParams):
        super().__init__()
        self.vocab_size, self.ngram, self.buckets = vocab_size, config.bag.ngram, config.bag.buckets
        rows = vocab_size + (self.buckets if self.ngram > 1 else 0)
        # sparse gradients: an optimizer step touches only the rows a batch used
        self.embedding = nn.Embedding(rows, config.embed_dim, padding_idx=0, sparse=config.bag.sparse)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.embed_dim, num_classes)
        nn.init.uniform_(self.embedding.weight, -1 / config.embed_dim, 1 / config.embed_dim)

    def features(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = padding_mask(ids, lengths)
        features, masks = [ids], [mask]
        for n in range(2, self.ngram + 1):
            width = ids.shape[1] - n + 1
            if width <= 0:
                break
            hashed = ids[:, :width]
            for k in range(1, n):
                hashed = (hashed * NGRAM_PRIME + ids[:, k : k + width]) % NGRAM_MODULUS
            features.append(hashed * NGRAM_SCRAMBLE % NGRAM_MODULUS % self.buckets + self.vocab_size)
            masks.append(mask[:, n - 1 : n - 1 + width])
        return torch.cat(features, 1), torch.cat(masks, 1)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        features, mask = self.features(ids, lengths)
        return self.classifier(self.dropout(masked_mean(self.embedding(features), mask)))
