"""Typed, strictly validated params.yaml.

Every default lives here, one line each; params.yaml repeats them so DVC can
track each key. An unknown key, a wrong type or a value out of range is a
PipelineError that names the key path, e.g. ``tokenize.min_freq``.
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator

from pipeline.errors import PipelineError
from pipeline.paths import PARAMS

def _known_device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", value):
        raise ValueError("must be auto, cpu, cuda, cuda:<index> or mps")
    return value


Device = Annotated[str, AfterValidator(_known_device)]


class Section(BaseModel):
    # strict: no silent "yes" -> True or 2.5 -> 2; extra="forbid": typos are errors.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SplitNames(Section):
    """Names of the splits in the source (HF split, file stem or folder name)."""

    train: str = "train"
    validation: str | None = None  # None: any of validation/valid/val/dev, else carved from train
    test: str = "test"


class DownloadParams(Section):
    source: str = "hf:fancyzhx/ag_news"  # hf:<id>, http(s) URL, or a local file, folder or archive
    hf_config: str | None = None  # Hugging Face dataset config name
    splits: SplitNames = SplitNames()
    sha256: str | None = None  # checksum of the downloaded (or local) file, verified before use
    encoding: str = "utf-8"  # encoding of text files (CSV, TSV, JSON Lines, .txt)
    text_columns: list[str] = Field(default=["text"], min_length=1)  # several are joined with a space
    label_column: str = "label"
    column_names: list[str] | None = None  # for headerless CSV/TSV: the names of its columns
    label_names: dict[str | int, str] | None = None  # raw label -> class name, e.g. {1: World}
    validation_fraction: float = Field(default=0.1, gt=0, lt=1)  # of train, when the source has no validation split
    test_fraction: float = Field(default=0.2, gt=0, lt=1)  # of all rows, for single-file sources
    max_rows: int | None = Field(default=None, ge=2)  # per split, stratified sample, for quick runs
    seed: int = 42

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ValueError("must be 64 hexadecimal characters (a SHA-256 digest)")
        return value.lower() if value else value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown text encoding {value!r} (e.g. utf-8, latin-1, cp1252)") from None
        return value

    @field_validator("label_names")
    @classmethod
    def _string_keys(cls, value: dict[str | int, str] | None) -> dict[str | int, str] | None:
        # Raw labels are compared as strings, whatever YAML made of the keys.
        return {str(k): v for k, v in value.items()} if value is not None else None


class TokenizeParams(Section):
    language: str = "en"  # spaCy language code for spacy.blank (rule-based tokenizer, no model download)
    lowercase: bool = True
    strip_html: bool = True  # replace HTML tags such as IMDB's <br /> with a space
    max_tokens: int = Field(default=1000, ge=1)  # longer documents are truncated (IMDB: 3% of reviews)
    min_freq: int = Field(default=2, ge=1)  # rarer train tokens become <unk>
    max_vocab: int | None = Field(default=50_000, ge=3)  # including <pad> and <unk>
    workers: int | None = Field(default=None, ge=1)  # None: every core
    batch_size: int = Field(default=256, ge=1)  # documents per worker task


class BagParams(Section):
    ngram: int = Field(default=2, ge=1, le=4)  # 2: words and hashed word bigrams (fastText's wordNgrams)
    buckets: int = Field(default=1_000_000, ge=1)  # hash buckets for the n-grams (fastText's bucket)
    sparse: bool = True  # sparse embedding gradients: each step updates only the rows a batch used


class CnnParams(Section):
    filters: int = Field(default=100, ge=1)  # per width
    widths: list[PositiveInt] = Field(default=[3, 4, 5], min_length=1)  # tokens per filter


class LstmParams(Section):
    hidden: int = Field(default=128, ge=1)  # per direction
    layers: int = Field(default=1, ge=1)


class TransformerParams(Section):
    layers: int = Field(default=2, ge=1)
    heads: int = Field(default=4, ge=1)
    ff_dim: int = Field(default=256, ge=1)
    max_positions: int = Field(default=1024, ge=1)  # longer inputs are cut here


class ModelParams(Section):
    arch: Literal["bag", "cnn", "lstm", "transformer"] = "bag"
    embed_dim: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.2, ge=0, lt=1)
    bag: BagParams = BagParams()
    cnn: CnnParams = CnnParams()
    lstm: LstmParams = LstmParams()
    transformer: TransformerParams = TransformerParams()


class TrainParams(Section):
    seed: int = 0  # weights, dropout and batch order; the same seed gives the same metrics on CPU
    device: Device = "auto"  # auto (CUDA when present, else CPU), cpu, cuda, cuda:1, ...
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    batch_size: int = Field(default=64, ge=1)  # documents per optimizer step (before accumulation)
    accumulate: int = Field(default=1, ge=1)  # batches per optimizer step
    max_epochs: int = Field(default=30, ge=1)  # a cap, not a budget: early stopping ends runs (5 left small data undertrained)
    lr: float = Field(default=0.01, gt=0)  # peak learning rate
    weight_decay: float = Field(default=0.01, ge=0)  # AdamW, on dense weight matrices only
    warmup: float = Field(default=0.05, ge=0, lt=1)  # share of all steps spent warming up linearly
    schedule: Literal["cosine", "linear", "constant"] = "linear"  # decay after warmup
    clip_norm: float | None = Field(default=1.0, gt=0)  # gradient clipping; null: off
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    eval_every: int | None = Field(default=None, ge=1)  # validate every N optimizer steps; null: every epoch
    monitor: Literal["loss", "accuracy", "macro_f1"] = "accuracy"  # validation metric for the best checkpoint and early stopping (loss rises from over-confidence while accuracy still improves)
    mode: Literal["auto", "min", "max"] = "auto"  # auto: min for loss, max otherwise
    patience: int = Field(default=2, ge=0)  # validations without improvement before stopping
    min_delta: float = Field(default=0.002, ge=0)  # smaller changes do not count as improvement (0.2 point of accuracy: a few validation texts, noise)
    workers: int | None = Field(default=None, ge=0)  # batch-building processes; null: 0 on CPU, 4 on CUDA
    compile: bool = False  # torch.compile the model (slow to start, faster on GPU)
    threads: int | None = Field(default=None, ge=1)  # CPU threads for torch; null: every core


class EvaluateParams(Section):
    device: Device = "auto"
    batch_size: int = Field(default=256, ge=1)
    errors: int = Field(default=50, ge=0)  # most confident mistakes written to reports/errors.csv
    error_chars: int = Field(default=300, ge=20)  # texts in errors.csv are cut here


class ExportParams(Section):
    opset: int = Field(default=18, ge=17, le=24)  # ONNX opset of the exported graphs (17-24 tested)
    int8_min_weights: int = Field(default=4096, ge=0)  # smaller weight tensors stay fp32 in the int8 model: little to save, latency to lose
    threads: int | None = Field(default=None, ge=1)  # CPU threads for PyTorch and ONNX Runtime while measuring; null: every core
    batch_size: int = Field(default=256, ge=1)  # documents per batch when scoring the test split
    latency_runs: int = Field(default=300, ge=10)  # batch-1 calls timed per engine, on random test documents
    latency_warmup: int = Field(default=30, ge=0)  # untimed calls first, so every engine is measured warm
    throughput_batches: int = Field(default=30, ge=1)  # batch-64 calls timed per engine
    seed: int = 0  # which test documents are timed


class BaselineParams(Section):
    enabled: bool = True  # false: the stage writes an empty reports/baseline.json
    analyzer: Literal["auto", "word", "char"] = "auto"  # auto: char 1-3 grams for zh/ja/th..., word 1-2 grams otherwise
    min_df: int = Field(default=2, ge=1)  # n-grams in fewer train texts are dropped
    C: float | None = Field(default=None, gt=0)  # logistic regression's inverse regularization; null: best of a grid on validation
    max_iter: int = Field(default=1000, ge=1)


class ReportParams(Section):
    examples: int = Field(default=10, ge=0)  # misclassified test texts shown (from reports/errors.csv)


class Params(Section):
    download: DownloadParams = DownloadParams()
    tokenize: TokenizeParams = TokenizeParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    export: ExportParams = ExportParams()
    baseline: BaselineParams = BaselineParams()
    report: ReportParams = ReportParams()


def describe_error(error: dict[str, Any]) -> str:
    """One pydantic error as 'key.path: what is wrong (got value)'."""
    key = ".".join(str(part) for part in error["loc"] if part != "[key]")
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    return f"{key}: {message} (got {error['input']!r})"


def parse_params(data: Any, origin: str = "params.yaml") -> Params:
    """Validate an already-parsed params mapping."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PipelineError(f"{origin}: expected a mapping of sections (download:, tokenize:, ...)")
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(describe_error(e) for e in exc.errors())
        raise PipelineError(f"{origin}: {problems}. Fix it in {origin} (or in your -S override).") from None


def load_params(path: Path = PARAMS) -> Params:
    """Read and validate params.yaml (YAML 1.2, as DVC writes it: 1e-4 is a float)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    if not path.is_file():
        raise PipelineError(f"{path}: no such params file; run from the project root or pass --params")
    try:
        data = YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise PipelineError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return parse_params(data, origin=str(path))

