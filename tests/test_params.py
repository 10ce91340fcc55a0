"""params.yaml is validated strictly and errors name the key."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
from conftest import REPO, assert_user_error, invoke, run_cli, write_params
from pydantic import BaseModel

from pipeline.errors import PipelineError
from pipeline.params import Params, load_params, parse_params


def yaml_keys(data: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in data.items():
        keys |= yaml_keys(value, f"{prefix}{key}.") if isinstance(value, dict) and key != "label_names" else {f"{prefix}{key}"}
    return keys


def test_params_yaml_lists_every_key():
    """DVC tracks a param only if params.yaml has it: every key is there, whatever its value
    (after `dvc exp run -S ...` the workspace holds the experiment's values)."""
    import yaml

    shipped = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    assert yaml_keys(shipped) == leaf_keys()
    load_params(REPO / "params.yaml")  # and it is valid


@pytest.mark.skipif(not os.environ.get("CI"), reason="a working checkout's params.yaml holds the user's experiment values; CI checks the shipped ones")
def test_shipped_params_yaml_repeats_the_defaults():
    assert load_params(REPO / "params.yaml") == Params()


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"tokenize": {"min_freqq": 2}}, "tokenize.min_freqq: unknown key"),
        ({"trian": {}}, "trian: unknown key"),
        ({"tokenize": {"min_freq": "two"}}, "tokenize.min_freq: Input should be a valid integer"),
        ({"tokenize": {"min_freq": 2.5}}, "tokenize.min_freq"),
        ({"tokenize": {"lowercase": "yes"}}, "tokenize.lowercase: Input should be a valid boolean"),
        ({"tokenize": {"max_tokens": 0}}, "tokenize.max_tokens: Input should be greater than or equal to 1"),
        ({"download": {"validation_fraction": 1.5}}, "download.validation_fraction: Input should be less than 1"),
        ({"download": {"sha256": "abc"}}, "download.sha256: must be 64 hexadecimal"),
        ({"download": {"encoding": "klingon"}}, "download.encoding: unknown text encoding"),
        ({"download": {"text_columns": []}}, "download.text_columns"),
        ({"download": {"splits": {"dev": "x"}}}, "download.splits.dev: unknown key"),
        (["not", "a", "mapping"], "expected a mapping"),
    ],
)
def test_bad_params_name_the_key(data, fragment):
    with pytest.raises(PipelineError, match=fragment.replace(".", r"\.")) as info:
        parse_params(data)
    assert "\n" not in str(info.value)


def test_yaml_1_2_numbers_and_label_name_keys(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("download:\n  validation_fraction: 1e-1\n  label_names: {1: World, 2: Sports}\n")
    params = load_params(path)
    assert params.download.validation_fraction == 0.1
    assert params.download.label_names == {"1": "World", "2": "Sports"}


def test_cli_reports_bad_params_in_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text("tokenize:\n  min_freq: often\n")
    assert_user_error(invoke("tokenize", cwd=tmp_path), "tokenize.min_freq")


def test_cli_reports_invalid_yaml_and_missing_file(tmp_path):
    (tmp_path / "params.yaml").write_text("download: [unclosed\n")
    assert_user_error(invoke("download", cwd=tmp_path), "not valid YAML")
    assert_user_error(invoke("download", "--params", "missing.yaml", cwd=tmp_path), "missing.yaml", "no such params file")


# --- every leaf key, every rule ------------------------------------------------------------
# One row per case: (key path, bad value, what the message must say[, other keys it needs]).
# TYPE rows give a value of the wrong type; VALUE rows a value of the right type that a rule
# forbids; RULE rows break a rule between keys (the message must name the key it blames).
TYPE = [
    ("download.source", 5, "valid string"),
    ("download.task", 1, "Input should be 'multiclass' or 'multilabel'"),
    ("download.label_separator", 1, "valid string"),
    ("download.label_columns", "labels", "valid list"),
    ("download.tsv_quoting", True, "Input should be 'none' or 'csv'"),
    ("train.class_weights", 1, "Input should be 'auto', 'none' or 'balanced'"),
    ("download.hf_config", 5, "valid string"),
    ("download.splits.train", 5, "valid string"),
    ("download.splits.validation", 5, "valid string"),
    ("download.splits.test", ["test"], "valid string"),
    ("download.sha256", 5, "valid string"),
    ("download.encoding", 8, "valid string"),
    ("download.text_columns", "text", "valid list"),
    ("download.label_column", 0, "valid string"),
    ("download.column_names", "a,b", "valid list"),
    ("download.label_names", 5, "valid dictionary"),
    ("download.validation_fraction", "0.1", "valid number"),
    ("download.test_fraction", "0.2", "valid number"),
    ("download.max_rows", 100.0, "valid integer"),
    ("download.max_unpacked_bytes", 1e9, "valid integer"),
    ("download.seed", "42", "valid integer"),
    ("tokenize.language", 1, "valid string"),
    ("tokenize.lowercase", "yes", "valid boolean"),
    ("tokenize.strip_html", 1, "valid boolean"),
    ("tokenize.max_tokens", "1000", "valid integer"),
    ("tokenize.min_freq", 2.5, "valid integer"),
    ("tokenize.max_vocab", "50k", "valid integer"),
    ("tokenize.workers", "all", "valid integer"),
    ("tokenize.batch_size", True, "valid integer"),
    ("tokenize.truncation", 1, "Input should be 'head' or 'head_tail'"),
    ("model.arch", 1, "Input should be 'bag', 'cnn', 'lstm', 'transformer' or 'pretrained'"),
    ("model.embed_dim", "32", "valid integer"),
    ("model.dropout", "0.2", "valid number"),
    ("model.bag.ngram", 2.0, "valid integer"),
    ("model.bag.buckets", "1M", "valid integer"),
    ("model.bag.sparse", "true", "valid boolean"),
    ("model.bag.binary", 1, "valid boolean"),
    ("model.bag.min_count", 2.5, "valid integer"),
    ("model.bag.feature_dropout", "some", "valid number"),
    ("model.bag.idf", "often", "valid boolean"),
    ("model.bag.pooling", ["mean"], "Input should be 'auto', 'mean', 'mean_max' or 'mean_label_max'"),
    ("model.cnn.filters", "100", "valid integer"),
    ("model.cnn.widths", 3, "valid list"),
    ("model.lstm.hidden", 128.5, "valid integer"),
    ("model.lstm.layers", "1", "valid integer"),
    ("model.transformer.layers", "2", "valid integer"),
    ("model.transformer.heads", 4.0, "valid integer"),
    ("model.transformer.ff_dim", "256", "valid integer"),
    ("model.transformer.max_positions", "1024", "valid integer"),
    ("model.pretrained.source", 5, "valid string"),
    ("model.pretrained.revision", 5, "valid string"),
    ("model.pretrained.pooling", 1, "Input should be 'mean' or 'cls'"),
    ("train.seed", "0", "valid integer"),
    ("train.device", 0, "valid string"),
    ("train.precision", 16, "Input should be 'auto', 'fp32' or 'bf16'"),
    ("train.batch_size", "64", "valid integer"),
    ("train.accumulate", 1.5, "valid integer"),
    ("train.max_epochs", "5", "valid integer"),
    ("train.lr", "1e-3", "valid number"),
    ("train.weight_decay", "0", "valid number"),
    ("train.warmup", "5%", "valid number"),
    ("train.schedule", 3, "Input should be 'plateau', 'cosine', 'linear' or 'constant'"),
    ("train.plateau_factor", "half", "valid number"),
    ("train.clip_norm", "off", "valid number"),
    ("train.label_smoothing", "0.1", "valid number"),
    ("train.join_texts", "30%", "valid number"),
    ("train.eval_every", "epoch", "valid integer"),
    ("train.monitor", 1, "Input should be 'auto', 'loss', 'accuracy' or 'macro_f1'"),
    ("train.mode", True, "Input should be 'auto', 'min' or 'max'"),
    ("train.patience", "2", "valid integer"),
    ("train.min_delta", "0", "valid number"),
    ("train.workers", "4", "valid integer"),
    ("train.compile", "no", "valid boolean"),
    ("train.tensorboard", "yes", "valid boolean"),
    ("train.threads", 2.0, "valid integer"),
    ("train.devices", "2", "valid integer"),
    ("evaluate.device", ["cpu"], "valid string"),
    ("evaluate.batch_size", "256", "valid integer"),
    ("evaluate.errors", "50", "valid integer"),
    ("evaluate.error_chars", 300.0, "valid integer"),
    ("export.opset", "18", "valid integer"),
    ("export.int8_min_weights", 4096.0, "valid integer"),
    ("export.threads", "1", "valid integer"),
    ("export.batch_size", "256", "valid integer"),
    ("export.latency_runs", "300", "valid integer"),
    ("export.latency_warmup", 30.5, "valid integer"),
    ("export.throughput_batches", "30", "valid integer"),
    ("export.seed", "0", "valid integer"),
    ("download.revision", 7, "valid string"),
    ("download.dedup", "yes", "valid boolean"),
    ("export.max_abs_diff", "0.001", "valid number"),
    ("export.parity_documents", "500", "valid integer"),
    ("export.max_int8_drop", "0.01", "valid number"),
    ("export.calibrate", "on", "valid boolean"),
    ("baseline.enabled", "on", "valid boolean"),
    ("baseline.analyzer", 1, "Input should be 'auto', 'word' or 'char'"),
    ("baseline.min_df", "2", "valid integer"),
    ("baseline.C", "16", "valid number"),
    ("baseline.max_iter", 10.5, "valid integer"),
    ("report.examples", "10", "valid integer"),
]
VALUE = [
    ("download.source", "", "at least 1 character"),
    ("download.task", "multi", "Input should be 'multiclass' or 'multilabel'"),
    ("download.label_separator", "", "at least 1 character"),
    ("download.label_columns.0", "", "at least 1 character"),
    ("download.tsv_quoting", "excel", "Input should be 'none' or 'csv'"),
    ("train.class_weights", "inverse", "Input should be 'auto', 'none' or 'balanced'"),
    ("download.label_names", ["World"], "at least two classes"),
    ("download.source", "hf:", "hf: needs a dataset id"),
    ("download.hf_config", "", "at least 1 character"),
    ("download.revision", "", "at least 1 character"),
    ("download.splits.train", "", "at least 1 character"),
    ("download.splits.validation", "", "at least 1 character"),
    ("download.splits.test", "", "at least 1 character"),
    ("download.sha256", "abc", "must be 64 hexadecimal"),
    ("download.encoding", "klingon", "unknown text encoding"),
    ("download.text_columns", [], "at least 1 item"),
    ("download.text_columns", ["title", "title"], "'title' more than once"),
    ("download.text_columns.0", "", "at least 1 character"),
    ("download.label_column", "", "at least 1 character"),
    ("download.column_names", ["text", "label", "text"], "'text' more than once"),
    ("download.column_names.1", "", "at least 1 character"),
    ("download.label_names", {1: "World"}, "at least two classes"),
    ("download.label_names", {1: "World", 2: "World"}, "at least two classes"),
    ("download.label_names", {"": "World", 2: "Sports"}, "raw label cannot be empty"),
    ("download.label_names.2", "", "at least 1 character"),
    ("download.validation_fraction", 0.0, "greater than 0"),
    ("download.validation_fraction", 1.0, "less than 1"),
    ("download.validation_fraction", float("nan"), "finite number"),
    ("download.test_fraction", 0, "greater than 0"),
    ("download.test_fraction", 1.5, "less than 1"),
    ("download.max_rows", 1, "greater than or equal to 2"),
    ("download.max_unpacked_bytes", 0, "greater than or equal to 1"),
    ("download.seed", -1, "greater than or equal to 0"),
    ("download.seed", 2**64, "less than or equal to"),
    ("tokenize.language", "", "at least 1 character"),
    ("tokenize.max_tokens", 0, "greater than or equal to 1"),
    ("tokenize.min_freq", 0, "greater than or equal to 1"),
    ("tokenize.max_vocab", 2, "greater than or equal to 3"),
    ("tokenize.max_vocab", 2**31, "less than or equal to 2147483647"),
    ("tokenize.workers", 0, "greater than or equal to 1"),
    ("tokenize.batch_size", 0, "greater than or equal to 1"),
    ("tokenize.truncation", "tail", "Input should be 'head' or 'head_tail'"),
    ("model.arch", "rnn", "Input should be 'bag'"),
    ("model.embed_dim", 0, "greater than or equal to 1"),
    ("model.dropout", 1.0, "less than 1"),
    ("model.dropout", -0.1, "greater than or equal to 0"),
    ("model.bag.ngram", 0, "greater than or equal to 1"),
    ("model.bag.ngram", 5, "less than or equal to 4"),
    ("model.bag.buckets", 0, "greater than or equal to 1"),
    ("model.bag.buckets", 2**31, "less than or equal to 2147483647"),
    ("model.bag.pooling", "max", "Input should be 'auto', 'mean', 'mean_max' or 'mean_label_max'"),
    ("model.bag.min_count", 0, "greater than or equal to 1"),
    ("model.bag.feature_dropout", 1.0, "less than 1"),
    ("model.cnn.filters", 0, "greater than or equal to 1"),
    ("model.cnn.widths", [], "at least 1 item"),
    ("model.cnn.widths", [3, 4, 3], "width 3 more than once"),
    ("model.cnn.widths.1", 0, "greater than 0"),
    ("model.lstm.hidden", 0, "greater than or equal to 1"),
    ("model.lstm.layers", 0, "greater than or equal to 1"),
    ("model.transformer.layers", 0, "greater than or equal to 1"),
    ("model.transformer.heads", 0, "greater than or equal to 1"),
    ("model.transformer.ff_dim", 0, "greater than or equal to 1"),
    ("model.transformer.max_positions", 0, "greater than or equal to 1"),
    ("model.pretrained.source", "", "at least 1 character"),
    ("model.pretrained.revision", "", "at least 1 character"),
    ("model.pretrained.pooling", "max", "Input should be 'mean' or 'cls'"),
    ("train.seed", -1, "greater than or equal to 0"),
    ("train.device", "gpu", "must be auto, cpu, cuda"),
    ("train.device", "cuda:123456789", "must be auto, cpu, cuda"),
    ("train.precision", "fp16", "Input should be 'auto'"),
    ("train.batch_size", 0, "greater than or equal to 1"),
    ("train.accumulate", 0, "greater than or equal to 1"),
    ("train.max_epochs", 0, "greater than or equal to 1"),
    ("train.lr", 0.0, "greater than 0"),
    ("train.lr", float("inf"), "finite number"),
    ("train.weight_decay", -0.01, "greater than or equal to 0"),
    ("train.weight_decay", float("nan"), "finite number"),
    ("train.warmup", -0.1, "greater than or equal to 0"),
    ("train.schedule", "step", "Input should be 'plateau'"),
    ("train.plateau_factor", 0, "greater than 0"),
    ("train.plateau_factor", 1.5, "less than or equal to 1"),
    ("train.clip_norm", 0.0, "greater than 0"),
    ("train.label_smoothing", 1.0, "less than 1"),
    ("train.join_texts", 1.5, "less than or equal to 1"),
    ("train.join_texts", -0.1, "greater than or equal to 0"),
    ("train.eval_every", 0, "greater than or equal to 1"),
    ("train.monitor", "f1", "Input should be 'auto'"),
    ("train.mode", "maximize", "Input should be 'auto'"),
    ("train.patience", -1, "greater than or equal to 0"),
    ("train.min_delta", -0.001, "greater than or equal to 0"),
    ("train.workers", -1, "greater than or equal to 0"),
    ("train.threads", 0, "greater than or equal to 1"),
    ("train.devices", 0, "greater than or equal to 1"),
    ("evaluate.device", "tpu", "must be auto, cpu, cuda"),
    ("evaluate.batch_size", 0, "greater than or equal to 1"),
    ("evaluate.errors", -1, "greater than or equal to 0"),
    ("evaluate.error_chars", 19, "greater than or equal to 20"),
    ("export.opset", 16, "greater than or equal to 17"),
    ("export.opset", 25, "less than or equal to 24"),
    ("export.int8_min_weights", -1, "greater than or equal to 0"),
    ("export.threads", 0, "greater than or equal to 1"),
    ("export.batch_size", 0, "greater than or equal to 1"),
    ("export.latency_runs", 9, "greater than or equal to 10"),
    ("export.latency_warmup", -1, "greater than or equal to 0"),
    ("export.throughput_batches", 0, "greater than or equal to 1"),
    ("export.seed", -1, "greater than or equal to 0"),
    ("export.max_abs_diff", 0, "greater than 0"),
    ("export.parity_documents", 0, "greater than or equal to 1"),
    ("export.max_int8_drop", -0.01, "greater than or equal to 0"),
    ("export.max_int8_drop", 1.5, "less than or equal to 1"),
    ("baseline.analyzer", "chars", "Input should be 'auto', 'word' or 'char'"),
    ("baseline.min_df", 0, "greater than or equal to 1"),
    ("baseline.C", 0, "greater than 0"),
    ("baseline.C", -1.0, "greater than 0"),
    ("baseline.max_iter", 0, "greater than or equal to 1"),
    ("report.examples", -1, "greater than or equal to 0"),
]
# Keys whose only invalid values are of the wrong type.
NO_INVALID_VALUE = {"download.dedup", "tokenize.lowercase", "tokenize.strip_html", "model.bag.sparse", "model.bag.binary", "model.bag.idf", "train.compile", "train.tensorboard", "baseline.enabled", "export.calibrate"}
TRANSFORMER = {"model.arch": "transformer"}
RULE = [
    ("model.transformer.heads", 3, "must divide model.embed_dim (32) evenly", TRANSFORMER),
    ("model.transformer.heads", 4, "must divide model.embed_dim (30) evenly", {**TRANSFORMER, "model.embed_dim": 30}),
    ("download.splits.test", "train", "must differ from download.splits.train", {}),
    ("download.splits.validation", "train", "must differ from download.splits.train and .test", {}),
    ("download.splits.validation", "test", "must differ from download.splits.train and .test", {}),
    ("download.sha256", "ab" * 32, "not hf: datasets", {}),  # the default source is hf:
    ("download.hf_config", "default", "applies to hf: sources only", {"download.source": "data/reviews.csv"}),
    ("download.revision", "main", "applies to hf: sources only", {"download.source": "data/reviews.csv"}),
    ("download.label_column", "title", "is also in download.text_columns", {"download.text_columns": ["title", "body"]}),
    ("download.column_names", ["text", "stars"], "has no 'label'", {}),
    ("download.label_separator", ",", "is for download.task multilabel", {}),
    ("download.label_columns", ["joy", "anger"], "is for download.task multilabel", {}),

    ("download.column_names", ["body", "text", "label"], "has no 'title'", {"download.text_columns": ["title", "text"]}),
]


def nested(flat: dict[str, Any]) -> dict:
    """{"a.b.c": 1} -> {"a": {"b": {"c": 1}}}; a numeric part indexes a list or dict already set."""
    data: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split(".")
        node: Any = data
        for part in parents:
            node = node.setdefault(part, {})
        if isinstance(node, list):
            node[int(leaf)] = value
        else:
            node[leaf] = value
    return data


def with_item(path: str, value: Any) -> dict[str, Any]:
    """A row for `download.text_columns.0` sets the whole list (or dict) with one bad item."""
    parent, _, index = path.rpartition(".")
    if not index.isdigit():
        return {path: value}
    valid = {"download.text_columns": ["text"], "download.column_names": ["text", "label"], "download.label_columns": ["a", "b"],
             "download.label_names": {1: "World", 2: "Sports"}, "model.cnn.widths": [3, 4]}[parent]
    if isinstance(valid, dict):
        return {parent: {**valid, int(index): value}}
    return {parent: [*valid[: int(index)], value, *valid[int(index) + 1 :]]}


def leaf_of(key: str) -> str:
    """download.text_columns.0 -> download.text_columns"""
    return re.sub(r"\.\d+$", "", key)


def leaf_keys(model: type[BaseModel] = Params, prefix: str = "") -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            keys |= leaf_keys(kind, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def assert_names_key(data: dict, key: str, fragment: str) -> str:
    with pytest.raises(PipelineError) as info:
        parse_params(data)
    message = str(info.value)
    assert "\n" not in message
    assert f" {key}: " in message, (key, message)
    assert fragment in message, (fragment, message)
    return message


@pytest.mark.parametrize(("key", "value", "fragment"), TYPE + VALUE, ids=lambda x: x if isinstance(x, str) and "." in x else "")
def test_every_bad_value_names_its_key(key, value, fragment):
    assert_names_key(nested(with_item(key, value)), key, fragment)


@pytest.mark.parametrize(("key", "value", "fragment", "also"), RULE, ids=lambda x: x if isinstance(x, str) and "." in x else "")
def test_every_rule_between_keys_names_the_key_to_change(key, value, fragment, also):
    assert_names_key(nested({**also, key: value}), key, fragment)
    if also:  # the rule is what fails: the value alone is valid
        parse_params(nested({key: value}))


def test_the_table_covers_every_key():
    leaves = leaf_keys()
    assert len(leaves) > 60
    typed = {key for key, _, _ in TYPE}
    valued = {leaf_of(key) for key, _, _ in VALUE}
    assert leaves - typed == set(), "add a TYPE row for each new key"
    assert leaves - valued - NO_INVALID_VALUE == set(), "add a VALUE row for each new key (or list it in NO_INVALID_VALUE)"
    assert {leaf_of(key) for key, *_ in TYPE + VALUE + RULE} <= leaves  # no row for a key that is gone


@pytest.mark.parametrize(
    "flat",
    [
        # Rules for one architecture bind only when model.arch picks it.
        {"model.arch": "bag", "model.transformer.heads": 3, "model.transformer.max_positions": 8, "model.cnn.widths": [5000]},
        {"model.arch": "transformer", "model.embed_dim": 30, "model.transformer.heads": 3, "tokenize.max_tokens": 1024},
        {"model.arch": "cnn", "model.cnn.widths": [2, 50], "tokenize.max_tokens": 50},
        # Allowed on purpose.
        {"train.monitor": "loss", "train.mode": "max"},
        {"train.device": "cpu", "train.precision": "bf16"},
        {"download.validation_fraction": 0.5, "download.test_fraction": 0.5},  # validation comes from what test leaves
        {"download.source": "hf:some/dataset", "download.hf_config": "plain_text", "download.splits": {"validation": "dev"}},
        {"download.source": "reviews.csv", "download.sha256": "AB" * 32, "download.column_names": ["id", "label", "text"]},
        {"download.label_names": {0: "neg", 1: "pos", 2: "pos"}},  # merging raw labels into one class
    ],
)
def test_valid_combinations_pass(flat):
    parse_params(nested(flat))


def test_a_huge_bad_value_gives_a_short_message():
    huge = "x" * 100_000_000
    message = assert_names_key({"tokenize": {"min_freq": huge}}, "tokenize.min_freq", "valid integer")
    assert len(message) < 300
    message = assert_names_key({"download": {"text_columns": [huge, huge]}}, "download.text_columns", "more than once")
    assert len(message) < 500
    many = {f"unknown_{i}_{huge[:1000]}": 1 for i in range(20)}
    message = str(pytest.raises(PipelineError, parse_params, many).value)
    assert len(message) < 1000 and message.count("unknown key") == 5 and "and 15 more" in message


def test_cli_reports_a_huge_bad_value_in_a_short_line(tmp_path):
    (tmp_path / "params.yaml").write_text("tokenize:\n  min_freq: '" + "z" * 2_000_000 + "'\n")
    result = run_cli("tokenize", cwd=tmp_path)
    assert_user_error(result, "tokenize.min_freq: Input should be a valid integer (got 'zzz", "zzz...zzz")
    assert len(result.stderr) < 300


def test_cli_cuts_a_long_error_line(tmp_path):
    deep = "folder/" * 300 + "params.yaml"  # a long path in a message that is not about params
    result = run_cli("train", "--params", deep, cwd=tmp_path)
    assert_user_error(result, "error: folder/folder/", "…")
    assert len(result.stderr.strip()) == len("error: ") + 1000


@pytest.mark.parametrize(
    ("command", "sections", "fragments"),
    [
        ("train", {"model": {"arch": "transformer", "transformer": {"heads": 3}}}, ["model.transformer.heads", "must divide model.embed_dim"]),
        ("download", {"download": {"source": "x.csv", "text_columns": ["text", "label"]}}, ["download.label_column", "is also in download.text_columns"]),
        ("export", {"export": {"opset": 12}}, ["export.opset", "greater than or equal to 17"]),
    ],
)
def test_cli_reports_broken_rules_in_one_line(tmp_path, command, sections, fragments):
    write_params(tmp_path, **sections)
    assert_user_error(invoke(command, cwd=tmp_path), *fragments)


def test_null_train_params_take_the_architecture_defaults():
    from typing import get_args

    from pipeline.params import ModelParams
    from pipeline.training.recipe import ARCH_TRAIN_DEFAULTS, resolved

    def picked(params: Params) -> tuple:
        train = resolved(params).train
        return train.lr, train.batch_size, train.max_epochs, train.warmup, train.weight_decay, train.schedule

    assert set(ARCH_TRAIN_DEFAULTS) == set(get_args(ModelParams.model_fields["arch"].annotation))  # every arch has its row
    assert picked(parse_params({"model": {"arch": "bag"}})) == (0.005, 64, 30, 1.5, 0.01, "plateau")  # BENCHMARKS.md "Defaults", issue 22
    for arch in ("cnn", "lstm", "transformer"):  # trained from scratch
        assert picked(parse_params({"model": {"arch": arch}})) == (0.01, 64, 30, 1.5, 0.01, "plateau"), arch
    assert picked(parse_params({"model": {"arch": "pretrained"}})) == (5e-5, 32, 3, 0.3, 0.01, "linear")  # fine-tuning
    explicit = parse_params({"model": {"arch": "pretrained"}, "train": {"lr": 1e-4, "max_epochs": 5, "warmup": 0.0, "schedule": "cosine"}})
    assert picked(explicit) == (1e-4, 32, 5, 0.0, 0.01, "cosine")  # a value the user set always wins, 0 included
    assert Params().train.lr is None and resolved(Params()).train.clip_norm == 1.0  # only the nulls change


def test_tokenize_max_tokens_null_is_per_tokenizer():
    from pipeline.text.settings import spacy_settings

    assert spacy_settings(Params().tokenize).max_tokens == 1000
    assert spacy_settings(parse_params({"tokenize": {"max_tokens": 300}}).tokenize).max_tokens == 300

def test_an_empty_params_file_is_an_error(tmp_path):
    (tmp_path / "params.yaml").write_text("# nothing yet\n")
    assert_user_error(invoke("train", cwd=tmp_path), "params.yaml is empty", "download:, tokenize:")


def test_a_pretrained_revision_may_be_null():
    """revision pins a Hub download; for a local folder (or to take the latest) it may be null."""
    params = parse_params({"model": {"arch": "pretrained", "pretrained": {"source": "models/minilm", "revision": None}}})
    assert params.model.pretrained.revision is None


@pytest.mark.parametrize(
    ("flat", "key", "fragment"),
    [
        ({"download.task": "multilabel", "download.label_separator": ",", "download.label_columns": ["joy", "anger"]},
         "download.label_separator", "both set"),
        ({"download.task": "multilabel", "download.label_columns": ["joy", "text"]}, "download.label_columns", "also in download.text_columns"),
        ({"download.task": "multilabel", "download.label_columns": ["joy", "anger"], "download.column_names": ["text", "joy"]},
         "download.column_names", "has no 'anger'"),
    ],
)
def test_multi_label_settings_are_checked_together(flat, key, fragment):
    assert_names_key(nested(flat), key, fragment)


def test_multi_label_settings_that_agree_pass():
    parse_params(nested({"download.task": "multilabel", "download.label_columns": ["joy", "anger"], "download.column_names": ["text", "joy", "anger"]}))
    parse_params(nested({"download.task": "multilabel", "download.label_separator": ",", "download.label_names": ["admiration", "amusement"]}))
    parse_params(nested({"download.task": "multilabel", "download.label_names": "data/emotions.txt"}))
