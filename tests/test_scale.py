"""Many classes without a cliff: 20,000 classes through train, evaluate and report in bounded
memory (per-class counts, not a classes x classes matrix; the report draws the top confusions)."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import pytest
from conftest import FAST_EXPORT, run_cli, write_csv, write_params

from pipeline.params import parse_params
from pipeline.stages.download import run_download
from pipeline.stages.tokenize import run_tokenize

CLASSES = 20_000
MEMORY_LIMIT_MB = 2_000  # a dense confusion matrix alone would be 3,200 MB (20,000^2 int64)


@pytest.mark.slow
def test_twenty_thousand_classes(tmp_path):
    write_csv(tmp_path / "source" / "train.csv", [(f"item{c} copy {k}", f"c{c}") for c in range(CLASSES) for k in range(2)])
    write_csv(tmp_path / "source" / "validation.csv", [(f"item{c} again", f"c{c}") for c in range(400)])
    write_csv(tmp_path / "source" / "test.csv", [(f"item{c} once more", f"c{c}") for c in range(400)])
    params = {"download": {"source": str(tmp_path / "source")}, "tokenize": {"workers": 1, "min_freq": 1},
              "model": {"embed_dim": 8, "bag": {"buckets": 1000}}, "train": {"max_epochs": 1, "threads": 2, "lr": 0.05},
              "export": FAST_EXPORT, "baseline": {"enabled": False}}  # a linear model of 20,000 classes would need GBs (it says so)
    write_params(tmp_path, **params)
    config = parse_params(params)
    run_download(config.download, tmp_path / "data" / "raw", tmp_path / "reports" / "data.json")
    run_tokenize(config.tokenize, tmp_path / "data" / "raw", tmp_path / "data" / "processed", tmp_path / "reports" / "tokenize.json",
                 runtime_path=tmp_path / "reports" / "runtime" / "tokenize.json", progress=False)
    for command in ("train", "evaluate", "export", "baseline", "report"):
        result = run_cli(command, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"20,000 classes: peak RSS of the stages {peak_mb:,.0f} MB")
    assert peak_mb < MEMORY_LIMIT_MB, peak_mb
    metrics = json.loads((tmp_path / "reports" / "evaluate.json").read_text())
    assert metrics["documents"] == 400 and f"c{CLASSES - 1}_f1" in metrics
    # the page: the most frequent confusions instead of a 20,000 x 20,000 matrix, and the top classes' table
    page = (tmp_path / "reports" / "report.html").read_text()
    assert "most frequent confusions" in page and "most frequent of the 20,000 classes" in page
    assert Path(tmp_path / "reports" / "report.html").stat().st_size < 3_000_000
