"""`bag`: fastText-like, word and hashed word n-gram embeddings, each distinct one once, mean- and max-pooled."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.data.tokenized import TokenizedSplit
from pipeline.models.masks import masked_max, masked_mean, padding_mask
from pipeline.params import ModelParams

# n-gram hash: a polynomial over token ids modulo the Mersenne prime 2^31 - 1, then one
# multiplicative scramble so that `% buckets` spreads n-grams evenly whatever `buckets` is.
# Every product stays below 2^63: no int64 overflow, the same result in torch and ONNX.
NGRAM_PRIME = 1_000_003
NGRAM_MODULUS = 2**31 - 1
NGRAM_SCRAMBLE = 48_271
# pooling auto: mean_max for single-label data; for label sets train fits each of these and keeps
# the better on validation (neither wins on every data set)
AUTO_POOLING = "mean_max"
AUTO_POOLINGS_FOR_LABEL_SETS = ("mean_max", "mean_label_max")


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

    Three departures from fastText, which together lifted every dataset we measured (BENCHMARKS.md,
    "Defaults"): `binary` embeds each distinct feature of a document once (as NBSVM and
    binarized TF-IDF do: repeating a word adds no evidence); `mean_max` pooling adds the max
    over features to the mean, so that a few strong n-grams are not averaged away in a long
    document; `min_count` leaves out hashed n-grams of fewer train documents (`fit_to_train`).

    `mean_label_max` takes the max in label space instead: each label's score of every feature,
    and its highest over the document, beside the linear layer over the mean: every label has a
    detector of its own, where mean_max shares embed_dim maxima among all labels. On GoEmotions
    (28 emotions, short comments) it lifts macro-F1 by 4 points; on long texts it is worse
    (BENCHMARKS.md, "Multi-label"), hence `auto`. Its memory per batch grows with features x labels.
    """

    def __init__(self, vocab_size: int, num_classes: int, config: ModelParams):
        super().__init__()
        self.vocab_size, self.ngram, self.buckets = vocab_size, config.bag.ngram, config.bag.buckets
        # auto is mean_max unless train chose mean_label_max for label sets (pipeline/stages/train.py)
        pooling = AUTO_POOLING if config.bag.pooling == "auto" else config.bag.pooling
        self.binary, self.pooling, self.min_count = config.bag.binary, pooling, config.bag.min_count
        self.feature_dropout = config.bag.feature_dropout
        rows = vocab_size + (self.buckets if self.ngram > 1 else 0)
        # sparse gradients: an optimizer step touches only the rows a batch used
        self.embedding = nn.Embedding(rows, config.embed_dim, padding_idx=0, sparse=config.bag.sparse)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.embed_dim * (2 if self.pooling == "mean_max" else 1), num_classes)
        # mean_label_max: each label's score of each feature (the max over them is added to its logit)
        self.label_scores = nn.Linear(config.embed_dim, num_classes, bias=False) if self.pooling == "mean_label_max" else None
        nn.init.uniform_(self.embedding.weight, -1 / config.embed_dim, 1 / config.embed_dim)
        # Which embedding rows a document may use: every vocabulary token (tokenize's min_freq already
        # chose them) and the hashed n-grams found in at least min_count train documents (fit_to_train).
        # An n-gram seen in one document only lets the model memorize that document (the baseline's min_df).
        filtered = self.ngram > 1 and self.min_count > 1
        self.register_buffer("usable", torch.ones(rows, dtype=torch.bool) if filtered else None)
        # idf: each feature weighs log((1 + N) / (1 + df)) + 1 in the mean (scikit-learn's smooth idf, fit_to_train)
        self.register_buffer("idf", torch.ones(rows) if config.bag.idf else None)

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

    @torch.no_grad()
    def fit_to_train(self, split: TokenizedSplit, batch_size: int = 512) -> str | None:
        """Count in how many train documents each feature occurs: keep the hashed n-grams in min_count or
        more, and (idf) weigh each feature by its inverse document frequency.
        Returns a line for the log."""
        if self.usable is None and self.idf is None:
            return None
        documents = torch.zeros(self.embedding.num_embeddings, dtype=torch.int64)
        for start in range(0, len(split), batch_size):
            ids, lengths, _ = split.batch(np.arange(start, min(start + batch_size, len(split))))
            features, mask = distinct_per_row(*self.features(torch.from_numpy(ids), torch.from_numpy(lengths)))
            documents += torch.bincount(features[mask], minlength=documents.numel())
        if self.idf is not None:
            self.idf.copy_(torch.log((1 + len(split)) / (1 + documents.double())).float() + 1)
        if self.usable is None:
            return None
        usable = documents >= self.min_count
        usable[: self.vocab_size] = True
        self.usable.copy_(usable)
        seen, kept = int((documents[self.vocab_size :] > 0).sum()), int(usable[self.vocab_size :].sum())
        return f"bag: {kept:,} of the {seen:,} n-gram buckets the train split fills are in {self.min_count}+ documents and used (model.bag.min_count)"

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # one masked column more: a batch of empty texts still has a feature axis for the max
        features, mask = self.features(nn.functional.pad(ids, (0, 1)), lengths)
        if self.usable is not None:
            mask = mask & self.usable[features]
        if self.binary:
            features, mask = distinct_per_row(features, mask)
        if self.training and self.feature_dropout > 0:  # word dropout (Iyyer et al. 2015): no document is learnt by one feature
            mask = mask & (torch.rand(mask.shape, device=mask.device) >= self.feature_dropout)
        # masked features (padding, repeats, rare n-grams) read the <pad> row (padding_idx: no gradient), so
        # the sparse gradient has no entry for them: half the time per step on IMDB (fewer entries to coalesce)
        vectors = self.embedding(features.masked_fill(~mask, 0))
        pooled = masked_mean(vectors, mask, None if self.idf is None else self.idf[features])
        if self.label_scores is not None:
            return self.classifier(self.dropout(pooled)) + masked_max(self.label_scores(self.dropout(vectors)), mask)
        if self.pooling == "mean_max":
            pooled = torch.cat([pooled, masked_max(vectors, mask)], 1)
        return self.classifier(self.dropout(pooled))
