"""Default paths, the same ones dvc.yaml passes to each stage (a test keeps them in step)."""

from pathlib import Path

PARAMS = Path("params.yaml")
RAW_DIR = Path("data/raw")  # download ->
PROCESSED_DIR = Path("data/processed")  # tokenize ->
DATA_REPORT = Path("reports/data.json")
TOKENIZE_REPORT = Path("reports/tokenize.json")
METRICS_DIR = Path("reports/metrics")  # <stage>.json: the few figures `dvc metrics show` lists (DVC metrics)
EVALUATE_METRICS = METRICS_DIR / "evaluate.json"
EXPORT_METRICS = METRICS_DIR / "export.json"
BASELINE_METRICS = METRICS_DIR / "baseline.json"
RUNTIME_DIR = Path("reports/runtime")  # timings, device, threads per stage: not metrics
TOKENIZE_RUNTIME = RUNTIME_DIR / "tokenize.json"
TRAIN_RUNTIME = RUNTIME_DIR / "train.json"
TRAIN_TIMINGS = RUNTIME_DIR / "train"  # samples/s per validation: a timing curve, out of the curves that compare
EXPORT_RUNTIME = RUNTIME_DIR / "export.json"
BASELINE_REPORT = Path("reports/baseline.json")  # baseline -> TF-IDF + logistic regression on the same splits
BASELINE_RUNTIME = RUNTIME_DIR / "baseline.json"
TRAIN_DIR = Path("models/train")  # train -> best.pt (inference state only)
TRAIN_RESUME = Path("models/.train-resume")  # not a DVC output, so DVC leaves it for a rerun to resume from
TRAIN_REPORT = Path("reports/train.json")
TRAIN_LIVE = Path("reports/train")  # DVCLive: per-validation curves under plots/metrics/
EVALUATE_REPORT = Path("reports/evaluate.json")  # evaluate -> everything it measured on test
EVALUATE_SCORES = Path("models/evaluate")  # evaluate -> the test logits -> export's gate
CONFUSION = Path("reports/confusion.csv")
CALIBRATION = Path("reports/calibration.json")  # evaluate -> the fitted temperature(s) and thresholds -> export
ERRORS = Path("reports/errors.csv")
EXPORT_DIR = Path("models/export")  # export -> the inference bundle (ONNX fp32 + int8, vocabulary, labels, manifest)
EXPORT_REPORT = Path("reports/export.json")
REPORTS_DIR = Path("reports")  # report <- every stage's reports
REPORT_HTML = Path("reports/report.html")
