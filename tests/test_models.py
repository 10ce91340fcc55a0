"""Each architecture: valid output for any input, padding has no effect, and it learns."""

from __future__ import annotations

import pytest
import torch

from pipeline.models import ARCHITECTURES, build_model
from pipeline.params import ModelParams, parse_params

SMALL = {
    "embed_dim": 16,
    "dropout": 0.1,
    "bag": {"buckets": 1000, "sparse": False},
    "cnn": {"filters": 8, "widths": [2, 3]},
    "lstm": {"hidden": 8},
    "transformer": {"layers": 1, "heads": 2, "ff_dim": 32, "max_positions": 64},
}
VOCAB, CLASSES = 50, 3
# `pretrained` built from an encoder config, as from a checkpoint: random weights, no download
TINY_BERT = {"model_type": "bert", "vocab_size": VOCAB, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 32, "max_position_embeddings": 256}


# every architecture, and bag's pooling in label space (mean_label_max) beside its default
VARIANTS = [*ARCHITECTURES, "bag:mean_label_max"]


def small_model(arch: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    arch, _, pooling = arch.partition(":")
    if pooling:
        overrides["bag"] = {**SMALL["bag"], "pooling": pooling, **overrides.get("bag", {})}
    config = ModelParams.model_validate({**SMALL, "arch": arch, **overrides})
    return build_model(config, VOCAB, CLASSES, TINY_BERT if arch == "pretrained" else None)


def pad(docs: list[list[int]], extra: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max([len(d) for d in docs] + [0]) + extra
    ids = torch.zeros(len(docs), width, dtype=torch.long)
    for i, doc in enumerate(docs):
        ids[i, : len(doc)] = torch.tensor(doc, dtype=torch.long)
    return ids, torch.tensor([len(d) for d in docs])


@pytest.mark.parametrize("arch", VARIANTS)
def test_any_input_gives_finite_logits(arch):
    model = small_model(arch).eval()
    for docs in ([[]], [[], [5]], [[7], [1, 2, 3, 4, 5, 6, 7, 8]], [[2] * 200]):
        logits = model(*pad(docs))
        assert logits.shape == (len(docs), CLASSES)
        assert torch.isfinite(logits).all(), (arch, docs)


@pytest.mark.parametrize("arch", VARIANTS)
def test_padding_does_not_change_the_output(arch):
    model = small_model(arch).eval()
    docs = [[3, 4, 5], [6, 7, 8, 9, 10, 11], [12]]
    with torch.no_grad():
        tight = model(*pad(docs))
        loose = model(*pad(docs, extra=9))
    torch.testing.assert_close(tight, loose, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", VARIANTS)
def test_learns_separable_data(arch):
    """Class c's texts use tokens from its own range: a model must beat chance clearly."""
    generator = torch.Generator().manual_seed(1)
    docs, labels = [], []
    for i in range(240):
        label = i % CLASSES
        length = int(torch.randint(1, 12, (1,), generator=generator))
        docs.append((torch.randint(2 + 15 * label, 2 + 15 * (label + 1), (length,), generator=generator)).tolist())
        labels.append(label)
    ids, lengths = pad(docs)
    y = torch.tensor(labels)
    model = small_model(arch, dropout=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(ids, lengths), y).backward()
        optimizer.step()
    model.eval()
    accuracy = (model(ids, lengths).argmax(1) == y).float().mean().item()
    assert accuracy > 0.9, (arch, accuracy)


def test_bag_ngrams_hash_into_their_own_rows():
    model = small_model("bag", bag={"ngram": 3, "buckets": 97, "sparse": True})
    features, mask = model.features(*pad([[5, 6, 7, 8]]))
    unigrams, ngrams = features[0, :4], features[0, 4:][mask[0, 4:]]
    assert unigrams.tolist() == [5, 6, 7, 8]
    assert len(ngrams) == 3 + 2  # bigrams and trigrams of 4 tokens
    assert ((ngrams >= VOCAB) & (ngrams < VOCAB + 97)).all()


def test_bag_binary_counts_each_feature_once_and_max_pooling_sees_it():
    counted = small_model("bag", bag={"buckets": 1000, "sparse": False, "binary": False, "pooling": "mean"}).eval()
    binary = small_model("bag", bag={"buckets": 1000, "sparse": False, "binary": True, "pooling": "mean"}).eval()
    once, thrice = pad([[5, 6]]), pad([[5, 6, 5, 6, 5, 6]])  # the same unigrams; the bigram (6, 5) is new
    twice = pad([[5, 6, 5, 6]])  # features: 5, 6, (5, 6), (6, 5) -- the same set as thrice
    assert torch.allclose(binary(*twice), binary(*thrice))
    assert not torch.allclose(counted(*twice), counted(*thrice))  # counts change the mean
    mean_max = small_model("bag", bag={"buckets": 1000, "sparse": False, "pooling": "mean_max"}).eval()
    assert mean_max.classifier.in_features == 2 * SMALL["embed_dim"]
    assert torch.isfinite(mean_max(*once)).all()


def test_bag_label_max_adds_each_labels_highest_feature_score_to_the_linear_layer_over_the_mean():
    model = small_model("bag:mean_label_max", bag={"ngram": 1}).eval()
    assert model.classifier.in_features == SMALL["embed_dim"]  # the mean alone; the max is in label space
    ids, lengths = pad([[5, 6, 7], [8]])
    with torch.no_grad():
        vectors = model.embedding.weight
        expected = torch.stack([
            model.classifier(vectors[doc].mean(0)) + (vectors[doc] @ model.label_scores.weight.T).max(0).values
            for doc in ([5, 6, 7], [8])
        ])
        torch.testing.assert_close(model(ids, lengths), expected)
    # auto, built directly (no train stage to choose), is mean_max
    assert small_model("bag", bag={"buckets": 1000, "sparse": False, "pooling": "auto"}).pooling == "mean_max"


def test_bag_min_count_drops_ngrams_of_a_single_train_document(tmp_path):
    import numpy as np

    from pipeline.data.tokenized import TokenizedSplit

    docs = [[5, 6, 7], [5, 6, 8], [9, 7, 5]]  # the bigram (5, 6) is in two documents, (6, 7) in one
    folder = tmp_path / "train"
    folder.mkdir()
    np.save(folder / "ids.npy", np.array([i for d in docs for i in d], dtype=np.int32))
    np.save(folder / "offsets.npy", np.cumsum([0] + [len(d) for d in docs]).astype(np.int64))
    np.save(folder / "labels.npy", np.zeros(len(docs), dtype=np.int64))
    model = small_model("bag", bag={"buckets": 1000, "sparse": False, "min_count": 2}).eval()
    model.fit_to_train(TokenizedSplit(folder))
    features, mask = model.features(*pad([[5, 6, 7]]))
    common, rare = features[0, 3].item(), features[0, 4].item()  # the rows of (5, 6) and (6, 7)
    assert model.usable[common] and not model.usable[rare]
    assert model.usable[:VOCAB].all()  # tokens: the vocabulary already chose them
    before = model(*pad([[5, 6, 7]]))
    with torch.no_grad():
        model.embedding.weight[rare] += 100.0  # an unused row moves nothing
    assert torch.equal(model(*pad([[5, 6, 7]])), before)
    with torch.no_grad():
        model.embedding.weight[common] += 100.0
    assert not torch.allclose(model(*pad([[5, 6, 7]])), before)
    keep_all = small_model("bag", bag={"buckets": 1000, "sparse": False, "min_count": 1})
    assert keep_all.usable is None


def test_bag_idf_weighs_the_mean_by_train_document_frequency(tmp_path):
    import math

    import numpy as np

    from pipeline.data.tokenized import TokenizedSplit
    from pipeline.models.masks import masked_mean

    docs = [[5, 6, 7], [5, 6, 8], [5, 9, 7]]  # token 5 in all three documents, 6 and 7 in two, 8 and 9 in one
    folder = tmp_path / "train"
    folder.mkdir()
    np.save(folder / "ids.npy", np.array([i for d in docs for i in d], dtype=np.int32))
    np.save(folder / "offsets.npy", np.cumsum([0] + [len(d) for d in docs]).astype(np.int64))
    np.save(folder / "labels.npy", np.zeros(len(docs), dtype=np.int64))
    model = small_model("bag", bag={"buckets": 1000, "sparse": False, "min_count": 1, "idf": True, "ngram": 1}).eval()
    assert small_model("bag", bag={"buckets": 1000, "sparse": False, "idf": False}).idf is None  # off: no buffer
    model.fit_to_train(TokenizedSplit(folder))
    expected = {5: 1.0, 6: math.log(4 / 3) + 1, 8: math.log(2) + 1, 10: math.log(4) + 1}  # 10: in no train document
    assert {k: round(model.idf[k].item(), 5) for k in expected} == {k: round(v, 5) for k, v in expected.items()}
    # the mean pooled by forward is the idf-weighted one: a rare token outweighs a common one
    vectors = model.embedding.weight[[5, 8]].unsqueeze(0)
    weighted = (vectors[0, 0] * expected[5] + vectors[0, 1] * expected[8]) / (expected[5] + expected[8])
    assert torch.allclose(masked_mean(vectors, torch.ones(1, 2, dtype=torch.bool), model.idf[[5, 8]].unsqueeze(0))[0], weighted)
    assert not torch.allclose(masked_mean(vectors, torch.ones(1, 2, dtype=torch.bool))[0], weighted)
    unweighted = small_model("bag", bag={"buckets": 1000, "sparse": False, "min_count": 1, "ngram": 1, "idf": False}).eval()
    unweighted.load_state_dict({k: v for k, v in model.state_dict().items() if k != "idf"})
    assert not torch.allclose(model(*pad([[5, 8]])), unweighted(*pad([[5, 8]])))  # the weights reach the logits


def test_model_params_are_validated():
    with pytest.raises(Exception, match="model.arch"):
        parse_params({"model": {"arch": "rnn"}})
    with pytest.raises(Exception, match="model.cnn.widths.0"):
        parse_params({"model": {"cnn": {"widths": [0, 3]}}})


@pytest.mark.parametrize(
    ("model", "max_tokens", "fitting", "fragments"),
    [
        ({"arch": "transformer", "transformer": {"max_positions": 999}}, 1000, 999, ["model.transformer.max_positions: 999", "tokenize.max_tokens (1000)"]),
        ({"arch": "transformer", "transformer": {"max_positions": 64}}, 100, 64, ["model.transformer.max_positions: 64", "tokenize.max_tokens (100)"]),
        ({"arch": "cnn", "cnn": {"widths": [3, 60]}}, 50, 60, ["model.cnn.widths", "width above tokenize.max_tokens (50)"]),
    ],
)
def test_an_architecture_must_fit_the_tokenized_documents(model, max_tokens, fitting, fragments):
    from pipeline.errors import PipelineError
    from pipeline.models import check_fits

    config = ModelParams.model_validate(model)
    with pytest.raises(PipelineError) as raised:
        check_fits(config, max_tokens)
    for fragment in fragments:
        assert fragment in str(raised.value)
    check_fits(config, fitting)  # at the limit it fits
    check_fits(ModelParams.model_validate({**model, "arch": "bag"}), max_tokens)  # the rules bind only the arch they are for
