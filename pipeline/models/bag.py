"""`bag`: fastText-like, word and hashed word n-gram embeddings, each distinct one once, mean- and max-pooled."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.masks import masked_max, masked_mean, padding_mask
from pipeline.params import ModelParams

# n-gram hash: a polynomial over token ids modulo the Mersenne prime 2^31 - 1, then one
# multiplicative scramble so that `% buckets` spreads n-grams evenly whatever `buckets` is.
# Every product stays below 2^63: no int64 overflow, the same result in torch and ONNX.
NGRAM_PRIME = 1_000_003
NGRAM_MODULUS = 2**31 - 1
NGRAM_SCRAMBLE = 48_271


def distinct_per_row(features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's features sorted, with a mask that keeps one copy of each (masked-out
    entries sort last and stay masked). Order does not matter to a bag."""
    sentinel = torch.iinfo(features.dtype).max
    ordered = torch.sort(features.masked_fill(~mask, sentinel), 1).values
    valid = ordered != sentinel
    repeat = torch.cat([torch.zeros_like(valid[:, :1]), ordered[:, 1:] == ordered[:, :-1]], 1)
    return ordered.masked_fill(~valid, 0), valid & ~repeat


class Bag(nn.Module):
    """fastText-like: embeddings of the tokens and hashed word n-grams, pooled, then a linear layer.

    Two departures from fastText, each worth points on every dataset we measured (BENCHMARKS.md,
    "Defaults"): `binary` embeds each distinct feature of a document once (as NBSVM and
    binarized TF-IDF do: repeating a word adds no evidence), and `mean_max` pooling adds the
    max over features to the mean, so that a few strong n-grams are not averaged away in a
    long document.
    """

    def __init__(self, vocab_size: int, num_classes: int, config: ModelParams):
        super().__init__()
        self.vocab_size, self.ngram, self.buckets = vocab_size, config.bag.ngram, config.bag.buckets
        self.binary, self.pooling = config.bag.binary, config.bag.pooling
        rows = vocab_size + (self.buckets if self.ngram > 1 else 0)
        # sparse gradients: an optimizer step touches only the rows a batch used
        self.embedding = nn.Embedding(rows, config.embed_dim, padding_idx=0, sparse=config.bag.sparse)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.embed_dim * (2 if self.pooling == "mean_max" else 1), num_classes)
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
        if self.binary:
            features, mask = distinct_per_row(features, mask)
        vectors = self.embedding(features)
        pooled = masked_mean(vectors, mask)
        if self.pooling == "mean_max":
            pooled = torch.cat([pooled, masked_max(vectors, mask)], 1)
        return self.classifier(self.dropout(pooled))
