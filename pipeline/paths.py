"""Default paths, the same ones dvc.yaml passes to each stage (a test keeps them in step)."""

from pathlib import Path

PARAMS = Path("params.yaml")
RAW_DIR = Path("data/raw")  # download ->
PROCESSED_DIR = Path("data/processed")  # tokenize ->
DATA_REPORT = Path("reports/data.json")
TOKENIZE_REPORT = Path("reports/tokenize.json")
