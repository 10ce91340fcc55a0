"""`report` stage: the other stages' JSON/CSV reports -> reports/report.html, one page to look at.

Rendered only from what the stages wrote (nothing is recomputed from data or models):
  reports/data.json          class balance, length histogram
  reports/tokenize.json      vocabulary and token statistics
  reports/runtime/*.json     timings, device and latency of tokenize, train and export
  params.yaml                the params of the run
  reports/train.json, reports/train/plots/metrics/**.tsv   training summary and curves
  reports/evaluate.json, reports/confusion.csv, reports/errors.csv   test results
  reports/export.json        export sizes, accuracy, latency
  reports/baseline.json      the linear baseline's test accuracy and macro-F1
Self-contained: the figures are inline SVG (matplotlib), the styles inline, no scripts and
no network at view time. Byte-stable for the same inputs (fixed SVG ids, no dates).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import __version__
from pipeline.errors import PipelineError
from pipeline.files import atomic_file, read_json
from pipeline.metrics import MISSED, NONE
from pipeline.params import Params
from pipeline.text.settings import HTML_TAG
from pipeline.training.live import CURVES

RUNTIME = "runtime"  # under the reports folder: <stage>.json with timings and device
# what the page is made of: each file under the reports folder, and the stage that writes it
# (dvc.yaml's report stage depends on each; tests/test_layout.py checks that it does)
INPUTS = {
    "data.json": "download",
    "tokenize.json": "tokenize", f"{RUNTIME}/tokenize.json": "tokenize",
    "train.json": "train", f"{RUNTIME}/train.json": "train",
    "evaluate.json": "evaluate", "confusion.csv": "evaluate", "errors.csv": "evaluate", "calibration.json": "evaluate",
    "export.json": "export", f"{RUNTIME}/export.json": "export",
    "baseline.json": "baseline", f"{RUNTIME}/baseline.json": "baseline",
}
CSV_COLUMNS = {"confusion.csv": ["actual", "predicted"], "errors.csv": ["text", "actual", "predicted", "confidence"]}
TEMPLATE = "report.html.j2"  # in pipeline/templates/
CJK_FONTS = ["Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans CJK KR", "Source Han Sans", "WenQuanYi Micro Hei",
             "Microsoft YaHei", "PingFang SC", "Hiragino Sans", "Malgun Gothic", "Apple SD Gothic Neo"]
PALETTE = ["#3b6fb6", "#e07b39", "#4a9d5b", "#b8433e", "#7d5ba6", "#8c6d46"]


def _read_json(path: Path, stage: str) -> Any:
    return read_json(path, f"run the {stage} stage (dvc repro)")


def _read_csv(path: Path, stage: str) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, keep_default_na=False)
    except FileNotFoundError:
        raise PipelineError(f"{path} not found; run the {stage} stage first (dvc repro)") from None
    except (OSError, ValueError) as exc:
        raise PipelineError(f"{path}: not a readable CSV ({exc}); rerun the {stage} stage") from None
    missing = [c for c in CSV_COLUMNS[path.name] if c not in frame.columns]
    if missing:
        raise PipelineError(f"{path} lacks column(s) {', '.join(missing)}; rerun the {stage} stage")
    return frame


def read_curve(live_dir: Path, name: str) -> pd.DataFrame | None:
    """One logged series (step, value), or None if the run did not log it."""
    path = live_dir / CURVES / f"{name}.tsv"
    if not path.is_file():
        return None
    frame = pd.read_csv(path, sep="\t")
    return frame if {"step", name.rsplit("/", 1)[-1]} <= set(frame.columns) else None


# --- figures --------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "svg.fonttype": "none",  # text stays text: smaller, selectable, crisp
        "svg.hashsalt": "report",  # fixed element ids: the same inputs give the same bytes
        "font.size": 9,
        # With svg.fonttype none the browser draws the text from this list: CJK fonts after
        # DejaVu, so class names in Chinese, Japanese or Korean get glyphs, not empty boxes.
        "font.sans-serif": ["DejaVu Sans", *CJK_FONTS, "Arial", "Helvetica"],
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    })
    return plt


def _svg(figure) -> str:
    plt = _pyplot()
    buffer = io.StringIO()
    with warnings.catch_warnings():
        # matplotlib measures text with DejaVu, which lacks CJK glyphs; the browser draws them
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # inline: drop the XML prolog and doctype


def class_balance_figure(data: dict) -> str:
    plt = _pyplot()
    classes = data["classes"]
    splits = [s for s in ("train", "validation", "test") if s in data]
    shown = f"the {MATRIX_CLASSES} most frequent of {len(classes):,} classes" if len(classes) > MATRIX_CLASSES else ""
    if shown:
        train_counts = data["train"]["classes"]
        classes = sorted(classes, key=lambda c: -train_counts.get(c, 0))[:MATRIX_CLASSES]
    figure, axis = plt.subplots(figsize=(5.2, min(1.1 + 0.175 * len(classes) * len(splits), 12)))
    height = 0.8 / len(splits)
    positions = np.arange(len(classes))
    for i, split in enumerate(splits):
        rows = max(data[split]["rows"], 1)
        shares = [data[split]["classes"].get(c, 0) / rows for c in classes]
        axis.barh(positions + i * height, shares, height, label=f"{split} ({data[split]['rows']:,})")
    axis.set_yticks(positions + height * (len(splits) - 1) / 2, classes)
    axis.invert_yaxis()
    axis.set_xlabel("share of the split's texts")
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=len(splits), frameon=False)
    axis.set_title(f"Class balance ({shown})" if shown else "Class balance")
    return _svg(figure)


def length_figure(data: dict) -> str | None:
    histograms = {split: data.get(split, {}).get("words_histogram") for split in ("train", "test")}
    if not any(histograms.values()):
        return None  # a data.json from before the histogram existed
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.2, 2.6))
    for split, histogram in histograms.items():
        if not histogram:
            continue
        edges, counts = np.array(histogram["edges"]), np.array(histogram["counts"])
        axis.stairs(counts / max(counts.sum(), 1), np.maximum(edges, 0.5), label=split, fill=split == "train", alpha=0.6 if split == "train" else 1)
    axis.set_xscale("log", base=2)
    axis.set_xlabel("words per text (bins double in width)")
    axis.set_ylabel("share of texts")
    axis.legend(frameon=False)
    axis.set_title("Text length")
    return _svg(figure)


def curves_figure(live_dir: Path) -> str | None:
    series = {name: read_curve(live_dir, name) for name in ("train/loss", "validation/loss", "validation/accuracy", "validation/macro_f1", "lr")}
    if series["validation/loss"] is None:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(10.5, 2.8))
    for name in ("train/loss", "validation/loss"):
        frame = series[name]
        if frame is not None:
            axes[0].plot(frame["step"], frame["loss"], marker="o", markersize=3, label=name.split("/")[0])
    axes[0].set_title("Loss")
    for name in ("validation/accuracy", "validation/macro_f1"):
        frame = series[name]
        if frame is not None:
            key = name.split("/")[1]
            axes[1].plot(frame["step"], frame[key], marker="o", markersize=3, label=key.replace("_", "-"))
    axes[1].set_title("Validation accuracy and macro-F1")
    if series["lr"] is not None:
        axes[2].plot(series["lr"]["step"], series["lr"]["lr"])
    axes[2].set_title("Learning rate")
    for axis in axes:
        axis.set_xlabel("optimizer step")
    for axis in axes[:2]:
        axis.legend(frameon=False)
    figure.tight_layout()
    return _svg(figure)


MATRIX_CLASSES = 30  # up to this many classes the confusion matrix is drawn whole; above, the top confusions
TOP_CONFUSIONS = 20
TABLE_CLASSES = 100  # per-class rows on the page (the most frequent test classes); evaluate.json has them all


def confusion_figure(confusion: pd.DataFrame, labels: list[str]) -> str:
    """The confusion matrix, from the (actual, predicted) pairs; with many classes, the most
    frequent confusions instead (a matrix of 20,000 classes would be 400 million cells)."""
    if len(labels) > MATRIX_CLASSES:
        return top_confusions_figure(confusion)
    plt = _pyplot()
    index = {name: i for i, name in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(matrix, (confusion["actual"].map(index).to_numpy(), confusion["predicted"].map(index).to_numpy()), 1)
    shares = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    size = min(2.2 + 0.55 * len(labels), 9)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    axis.grid(False)
    if len(labels) <= 20:
        for (row, column), count in np.ndenumerate(matrix):
            axis.text(column, row, f"{count:,}", ha="center", va="center", color="white" if shares[row, column] > 0.5 else "#222")
    axis.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center")
    axis.set_yticks(range(len(labels)), labels)
    axis.set_xlabel("predicted")
    axis.set_ylabel("actual")
    axis.set_title("Confusion matrix (test): counts, colour = share of the actual class")
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    return _svg(figure)


def top_confusions_figure(confusion: pd.DataFrame) -> str:
    plt = _pyplot()
    wrong = confusion[confusion["actual"] != confusion["predicted"]]
    pairs = wrong.groupby(["actual", "predicted"], sort=False).size().sort_values(ascending=False, kind="stable").head(TOP_CONFUSIONS)
    figure, axis = plt.subplots(figsize=(6.5, 1.0 + 0.25 * max(len(pairs), 1)))
    names = [f"{actual} → {predicted}" for actual, predicted in pairs.index]
    axis.barh(range(len(pairs)), pairs.to_numpy())
    axis.set_yticks(range(len(pairs)), names)
    axis.invert_yaxis()
    axis.set_xlabel("test documents")
    axis.set_title(f"The {len(pairs)} most frequent confusions (test): actual → predicted")
    return _svg(figure)


def label_f1_figure(rows: list[dict]) -> str:
    """Per label: its test F1 at the tuned threshold, and its support beside the bar."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.6, min(1.0 + 0.22 * len(rows), 12)))
    axis.barh(range(len(rows)), [row["f1"] or 0 for row in rows])
    axis.set_yticks(range(len(rows)), [f"{row['name']} ({row['support']:,})" for row in rows])
    axis.invert_yaxis()
    axis.set_xlim(0, 1)
    axis.set_xlabel("test F1 at the label's tuned threshold")
    axis.set_title("F1 per label (support in brackets)")
    return _svg(figure)


def reliability_figure(calibration: dict, metrics: dict) -> str | None:
    """Reliability diagram of the test split: mean confidence against accuracy (label sets: the
    share of labels present) per bin, before and after the temperature."""
    bins = calibration.get("reliability")
    if not bins:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(4.2, 4.0))
    axis.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=1)
    for key, name in (("uncalibrated", f"model (ECE {metrics.get('ece_uncalibrated', 0):.4f})"), ("calibrated", f"calibrated (ECE {metrics.get('ece', 0):.4f})")):
        points = [(c, a) for c, a, n in zip(bins[key]["confidence"], bins[key]["accuracy"], bins[key]["count"]) if n]
        if points:
            axis.plot(*zip(*points), marker="o", markersize=3, label=name)
    axis.set_xlabel("confidence" + (" (each label's probability)" if calibration.get("task") == "multilabel" else ""))
    axis.set_ylabel("share right" if calibration.get("task") != "multilabel" else "share of labels present")
    axis.set_title("Reliability (test)")
    axis.legend(frameon=False)
    return _svg(figure)


# --- the page -------------------------------------------------------------------------------
def flatten(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(data, dict):
        return [item for key, value in data.items() for item in flatten(value, f"{prefix}{key}.")]
    return [(prefix.rstrip("."), data)]


def per_class_rows(metrics: dict, labels: list[str], confusion: pd.DataFrame, calibration: dict) -> list[dict]:
    """A row per class in label order; with many classes, the TABLE_CLASSES most frequent in test.
    Label sets add each label's threshold and temperature."""
    support = confusion["actual"].value_counts()
    shown = labels if len(labels) <= TABLE_CLASSES else sorted([n for n in support.index if n in labels][:TABLE_CLASSES], key=labels.index)
    thresholds, temperatures = calibration.get("thresholds", {}), calibration.get("temperature")
    return [
        {
            "name": name,
            "precision": metrics.get(f"{name}_precision"),
            "recall": metrics.get(f"{name}_recall"),
            "f1": metrics.get(f"{name}_f1"),
            "support": int(metrics.get(f"{name}_support", support.get(name, 0))),
            "threshold": thresholds.get(name),
            "temperature": temperatures.get(name) if isinstance(temperatures, dict) else None,
        }
        for name in shown
    ]


def shown_errors(errors: pd.DataFrame, strip_html: bool) -> list[dict]:
    """The mistakes as the model read them: HTML tags (IMDB's <br />) removed when the tokenizer
    removed them, whitespace collapsed."""
    records = errors.to_dict("records")
    for record in records:
        text = HTML_TAG.sub(" ", str(record["text"])) if strip_html else str(record["text"])
        record["text"] = " ".join(text.split())
    return records


def run_report(params: Params, params_path: Path, reports: Path, live_dir: Path, out_path: Path) -> dict[str, Any]:
    """Read every stage's reports and write the HTML page; returns what it showed."""
    import jinja2
    import yaml

    read = {name: (_read_csv if name.endswith(".csv") else _read_json)(reports / name, stage) for name, stage in INPUTS.items()}
    data, metrics = read["data.json"], read["evaluate.json"]
    # each stage's metrics and its runtime numbers (timings, device) side by side on the page
    tokenize, train, baseline, export = ({**read[f"{stage}.json"], **read[f"{RUNTIME}/{stage}.json"]} for stage in ("tokenize", "train", "baseline", "export"))
    confusion = read["confusion.csv"].astype(str)
    errors = read["errors.csv"]
    labels = [str(c) for c in data["classes"]]
    multilabel = data.get("task") == "multilabel"
    unknown = sorted(set(confusion["actual"]).union(confusion["predicted"]) - set(labels) - ({MISSED, NONE} if multilabel else set()))
    if unknown:
        raise PipelineError(f"{reports / 'confusion.csv'} has classes that data.json lacks ({', '.join(unknown[:5])}); rerun dvc repro")
    per_class = per_class_rows(metrics, labels, confusion, read["calibration.json"])
    figures = {
        "balance": class_balance_figure(data),
        "lengths": length_figure(data),
        "curves": curves_figure(live_dir),
        "confusion": label_f1_figure(per_class) if multilabel else confusion_figure(confusion, labels),
        "reliability": reliability_figure(read["calibration.json"], metrics),
    }
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline", "templates"),
        autoescape=True,  # texts in errors.csv are user data: never raw HTML
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["num"] = lambda v, digits=4: f"{v:,.{digits}f}" if isinstance(v, (int, float)) else "–"
    environment.filters["count"] = lambda v: f"{v:,}" if isinstance(v, (int, float)) else "–"
    html = environment.get_template(TEMPLATE).render(
        version=__version__,
        arch=params.model.arch,
        params=yaml.safe_dump(params.model_dump(), sort_keys=False, allow_unicode=True),
        params_path=str(params_path),
        data=data,
        tokenize=tokenize,
        train=train,
        metrics=metrics,
        export=export,
        baseline=baseline,
        labels=labels,
        multilabel=multilabel,
        calibration=read["calibration.json"],
        params_calibrate=params.export.calibrate,
        per_class=per_class,
        errors=shown_errors(errors.head(params.report.examples), params.tokenize.strip_html),
        figures=figures,
    )
    with atomic_file(out_path) as handle:
        handle.write(html)
    return {"figures": [name for name, svg in figures.items() if svg], "bytes": len(html.encode("utf-8"))}
