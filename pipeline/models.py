"""The four architectures behind one interface: forward(ids, lengths) -> logits.

ids: int64 (batch, time), right-padded with 0 (<pad>); lengths: int64 (batch,).
Every model gives finite logits for any input, an empty text (length 0) included.
Only plain tensor ops are used so that every model exports to ONNX.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.params import ModelParams

# n-gram hash: a polynomial over token ids modulo the Mersenne prime 2^31 - 1, then one
# multiplicative scramble so that `% buckets` spreads n-grams evenly whatever `buckets` is.
# Every product stays below 2^63: no int64 overflow, the same result in torch and ONNX.
NGRAM_PRIME = 1_000_003
NGRAM_MODULUS = 2**31 - 1
NGRAM_SCRAMBLE = 48_271


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over time of (batch, time, dim) where mask is true; zeros for an empty row."""
    weights = mask.unsqueeze(-1).to(values.dtype)
    return (values * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def masked_max(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over time of (batch, time, dim) where mask is true; zeros for an empty row."""
    lowest = torch.finfo(values.dtype).min
    # one masked step appended so that a batch of empty texts (time 0) still has a max
    values, mask = nn.functional.pad(values, (0, 0, 0, 1)), nn.functional.pad(mask, (0, 1))
    peak = values.masked_fill(~mask.unsqueeze(-1), lowest).amax(1)
    return torch.where(mask.any(1, keepdim=True), peak, torch.zeros_like(peak))


def padding_mask(ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return torch.arange(ids.shape[1], device=ids.device).unsqueeze(0) < lengths.unsqueeze(1)


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


def reverse_within_lengths(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each row's first `length` steps reversed, padding left in place (its own inverse)."""
    steps = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
    index = torch.where(steps < lengths.unsqueeze(1), lengths.unsqueeze(1) - 1 - steps, steps)
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[2]))


class BiLSTM(nn.Module):
    """Bidirectional LSTM; the final states of both directions feed the classifier.

    No packed sequences: each direction is a plain LSTM over right-padded input, the
    backward one reading every row reversed within its length, and the last state is
    taken at position length - 1. Padding then never reaches a state that is used,
    the model exports to ONNX, and a CPU runs it ~9x faster than packed input.
    """

    def __init__(self, vocab_size: int, num_classes: int, config: ModelParams):
        super().__init__()
        hidden, layers = config.lstm.hidden, config.lstm.layers
        self.embedding = nn.Embedding(vocab_size, config.embed_dim, padding_idx=0)
        sizes = [config.embed_dim] + [2 * hidden] * (layers - 1)
        self.forward_layers = nn.ModuleList(nn.LSTM(size, hidden, batch_first=True) for size in sizes)
        self.backward_layers = nn.ModuleList(nn.LSTM(size, hidden, batch_first=True) for size in sizes)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(2 * hidden, num_classes)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # an empty text is read as one <pad> token, so every row has a last state
        ids = nn.functional.pad(ids, (0, 1))
        lengths = lengths.clamp(min=1)
        x = self.embedding(ids)
        for depth, (forward, backward) in enumerate(zip(self.forward_layers, self.backward_layers)):
            if depth:
                x = self.dropout(x)  # between layers, as nn.LSTM's dropout
            ahead, _ = forward(x)
            behind, _ = backward(reverse_within_lengths(x, lengths))
            x = torch.cat([ahead, reverse_within_lengths(behind, lengths)], 2)
        # last step of the forward direction; the backward direction ends at the first token
        last = (lengths - 1).view(-1, 1, 1).expand(-1, 1, x.shape[2] // 2)
        final = torch.cat([x[:, :, : x.shape[2] // 2].gather(1, last).squeeze(1), x[:, 0, x.shape[2] // 2 :]], 1)
        return self.classifier(self.dropout(final))


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


ARCHITECTURES: dict[str, type[nn.Module]] = {"bag": Bag, "cnn": TextCNN, "lstm": BiLSTM, "transformer": Transformer}


def build_model(config: ModelParams, vocab_size: int, num_classes: int) -> nn.Module:
    return ARCHITECTURES[config.arch](vocab_size, num_classes, config)
