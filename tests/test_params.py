"""params.yaml is validated strictly and errors name the key."""

from __future__ import annotations

import os

import pytest
from conftest import REPO, assert_user_error, run_cli

from pipeline.errors import PipelineError
from pipeline.params import Params, load_params, parse_params


def leaf_keys(data: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in data.items():
        keys |= leaf_keys(value, f"{prefix}{key}.") if isinstance(value, dict) and key != "label_names" else {f"{prefix}{key}"}
    return keys


def test_params_yaml_lists_every_key():
    """DVC tracks a param only if params.yaml has it: every key is there, whatever its value
    (after `dvc exp run -S ...` the workspace holds the experiment's values)."""
    import yaml

    shipped = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    assert leaf_keys(shipped) == leaf_keys(Params().model_dump())
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
    assert_user_error(run_cli("tokenize", cwd=tmp_path), "tokenize.min_freq")


def test_cli_reports_invalid_yaml_and_missing_file(tmp_path):
    (tmp_path / "params.yaml").write_text("download: [unclosed\n")
    assert_user_error(run_cli("download", cwd=tmp_path), "not valid YAML")
    assert_user_error(run_cli("download", "--params", "missing.yaml", cwd=tmp_path), "missing.yaml", "no such params file")
