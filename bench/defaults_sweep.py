"""Training defaults vs. the linear baseline on several datasets (issues 11 and 22).

    PYTHONPATH=. python bench/defaults_sweep.py [--datasets imdb-2k ag ag-2k imdb ...]
        [--configs old new ...] [--seeds 0 1] [--work /tmp/sweep] [--results bench/defaults_sweep.jsonl]

Length shift (issue 22): test texts that differ from training texts. `imdb-5k-short-train`
trains (and validates) on 5,000 IMDB reviews cut to their first 15-25 words and tests on whole
reviews; `imdb-5k-short-test` the reverse. `ag-titles-train` trains on AG News titles only and
tests on title + description; `ag-titles-test` the reverse. The baseline sees the same texts.

Multi-label (issue 24), scored by macro-F1 at each label's threshold tuned on validation:
`goemotions` (28 emotions, the published splits) and `ag-pairs`, AG News where 40% of the
texts are two news items of different topics, labelled with both (each item in one text only).

For each dataset the real stages run once and are cached under --work/<dataset>/ (download,
tokenize, baseline); then for each config and seed the real train and evaluate stages run.
A config is a dict of dotted param overrides on top of `Params()`, the shipped defaults, with
no per-dataset setting but the data format's. One JSON line per (dataset, config, seed) is
appended to --results, and a markdown table of test accuracy (multi-label: macro-F1 at the thresholds
tuned on validation) is printed at the end.
Lean on purpose: one training at a time, --threads torch threads (2; 1 on a shared machine,
where 2 threads on 2 busy cores are many times slower).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.params import Params, min_freq_for  # noqa: E402

# The stages are imported where they run: tokenize's worker processes re-import this script
# and must not load torch.

SHARED = Path("/work/shared/data")
AG_NEWS = {
    "source": str(SHARED / "ag_news/test.csv"),
    "column_names": ["label", "title", "description"],
    "text_columns": ["title", "description"],
    "label_names": {1: "World", 2: "Sports", 3: "Business", 4: "Sci/Tech"},
    "test_fraction": 0.2,
}
IMDB = {"source": str(SHARED / "imdb/aclImdb.tar.gz")}
GOEMOTIONS = {  # multi-label (issue 24): the published splits, headerless TSVs; scored by macro-F1 at tuned thresholds
    "source": str(SHARED / "goemotions"), "task": "multilabel", "column_names": ["text", "labels", "id"],
    "label_column": "labels", "label_separator": ",", "label_names": str(SHARED / "goemotions/emotions.txt"),
    "tsv_quoting": "csv",
}
DATASETS = {  # download params only: what the data format needs, nothing tuned
    "imdb": IMDB,
    "imdb-2k": {**IMDB, "max_rows": 2000},
    "ag": AG_NEWS,
    "ag-2k": {**AG_NEWS, "max_rows": 2000},
    "imdb-5k-short-train": {**IMDB, "max_rows": 5000},
    "imdb-5k-short-test": {**IMDB, "max_rows": 5000},
    "ag-titles-train": {"source": "{work}/ag-titles-train-source"},
    "ag-titles-test": {"source": "{work}/ag-titles-test-source"},
    "goemotions": GOEMOTIONS,
    "ag-pairs": {"source": "{work}/ag-pairs-source", "task": "multilabel", "label_column": "labels", "label_separator": "|"},
}
PAIRED = 0.4  # ag-pairs: the share of texts that are two news items of different topics
SHORT_WORDS = (15, 25)  # a cut review keeps this many of its first words (uniform, seeded)

CONFIGS: dict[str, dict] = {  # dotted overrides on top of Params(), the defaults of the checkout
    "shipped": {},
    "lr7e-3": {"train.lr": 0.007},
    "lr3e-3": {"train.lr": 0.003},
    "pat4": {"train.patience": 4},
    # the defaults before issue 11, spelled out so that they stay comparable after the change
    "old": {"train.max_epochs": 5, "train.patience": 2, "train.monitor": "loss", "train.lr": 0.01,
            "train.schedule": "linear", "train.warmup": 0.25, "model.embed_dim": 32, "model.dropout": 0.2,
            "train.weight_decay": 0.01, "train.min_delta": 0.0, "model.bag.binary": False, "model.bag.pooling": "mean",
            "model.bag.idf": False, "tokenize.min_freq": 2},
    # the first issue-11 defaults: counted features, mean pooling, lr 0.01
    "prev": {"model.bag.binary": False, "model.bag.pooling": "mean", "train.lr": 0.01, "model.bag.idf": False, "tokenize.min_freq": 2},
    # the issue-11 defaults (shipped until issue 22), spelled out: linear decay to 0 at the 30-epoch cap
    "issue11": {"train.lr": 0.005, "train.warmup": 1.5, "train.schedule": "linear", "train.max_epochs": 30,
                "train.monitor": "accuracy", "model.bag.feature_dropout": 0.0, "train.label_smoothing": 0.0,
                "model.bag.idf": False, "tokenize.min_freq": 2},
    # issue 22: a schedule that does not depend on the cap, and regularizers against memorizing (screened
    # on top of the defaults of then, before idf and min_freq 1)
    "plateau": {"train.schedule": "plateau"},
    "plateau-w1": {"train.schedule": "plateau", "train.warmup": 1.0},
    "plateau-fd1": {"train.schedule": "plateau", "model.bag.feature_dropout": 0.1},
    "plateau-fd2": {"train.schedule": "plateau", "model.bag.feature_dropout": 0.2},
    "plateau-fd3": {"train.schedule": "plateau", "model.bag.feature_dropout": 0.3},
    "plateau-ls1": {"train.schedule": "plateau", "train.label_smoothing": 0.1},
    "plateau-loss": {"train.schedule": "plateau", "train.monitor": "loss"},
    "plateau-mean": {"train.schedule": "plateau", "model.bag.pooling": "mean"},
    "plateau-drop5": {"train.schedule": "plateau", "model.dropout": 0.5},
    "plateau-fd2-ls1": {"train.schedule": "plateau", "model.bag.feature_dropout": 0.2, "train.label_smoothing": 0.1},
    "constant": {"train.schedule": "constant", "train.warmup": 1.0},
    "plateau-p3": {"train.schedule": "plateau", "train.patience": 3},
    "plateau-lr3e-3": {"train.schedule": "plateau", "train.lr": 0.003},
    "plateau-lr1e-2": {"train.schedule": "plateau", "train.lr": 0.01},
    "plateau-f3": {"train.schedule": "plateau", "train.plateau_factor": 0.3},
    "plateau-ngram1": {"train.schedule": "plateau", "model.bag.ngram": 1},
    "plateau-min1": {"train.schedule": "plateau", "model.bag.min_count": 1},
    "plateau-wd1e-1": {"train.schedule": "plateau", "train.weight_decay": 0.1},
    "plateau-d64": {"train.schedule": "plateau", "model.embed_dim": 64},
    # issue 22: some training texts joined to a second one of their class (train.join_texts)
    "join1": {"train.join_texts": 0.1},
    "join2": {"train.join_texts": 0.2},
    "join3": {"train.join_texts": 0.3},
    "join5": {"train.join_texts": 0.5},
    "nojoin": {"train.join_texts": 0.0},
    "bs32": {"train.batch_size": 32},
    # issue 22: unseen words (ag-titles-train: 18-20% of validation and test tokens are <unk>)
    "minfreq1": {"tokenize.min_freq": 1, "model.bag.idf": False},
    "idf": {"model.bag.idf": True, "tokenize.min_freq": 2},
    "idf-minfreq1": {"model.bag.idf": True, "tokenize.min_freq": 1},
    # the defaults from the plateau schedule until idf + min_freq 1 (issue 22), spelled out
    "plateau-noidf": {"model.bag.idf": False, "tokenize.min_freq": 2},
    # tokenize.min_freq for the other architectures (null: 2 for them; 1 is bag's)
    "cnn": {"model.arch": "cnn"},
    "cnn-minfreq1": {"model.arch": "cnn", "tokenize.min_freq": 1},
    "lstm": {"model.arch": "lstm"},
    "lstm-minfreq1": {"model.arch": "lstm", "tokenize.min_freq": 1},
    "minfreq1-min1": {"tokenize.min_freq": 1, "model.bag.min_count": 1, "model.bag.idf": False},
    "bs128": {"train.batch_size": 128},
    "md0": {"train.min_delta": 0.0},
    "wd1e-1": {"train.weight_decay": 0.1},
    "wd1e-1-drop5": {"train.weight_decay": 0.1, "model.dropout": 0.5},
    "join3-wd1e-1": {"train.join_texts": 0.3, "train.weight_decay": 0.1},
    "bs32-join3": {"train.batch_size": 32, "train.join_texts": 0.3},
    "wd1": {"train.weight_decay": 1.0},
    # a longer budget with early stopping doing the stopping
    "ep30": {"train.max_epochs": 30, "train.patience": 3},
    "ep30-acc": {"train.max_epochs": 30, "train.patience": 3, "train.monitor": "accuracy"},
    "ep30-acc-const": {"train.max_epochs": 30, "train.patience": 3, "train.monitor": "accuracy", "train.schedule": "constant"},
    "ep30-acc-lr3e-3": {"train.max_epochs": 30, "train.patience": 3, "train.monitor": "accuracy", "train.lr": 0.003},
    "ep30-acc-lr3e-2": {"train.max_epochs": 30, "train.patience": 3, "train.monitor": "accuracy", "train.lr": 0.03},
    "ep30-acc-d64": {"train.max_epochs": 30, "train.patience": 3, "train.monitor": "accuracy", "model.embed_dim": 64},
    "ep30-acc-drop5": {"train.max_epochs": 30, "train.patience": 3, "train.monitor": "accuracy", "model.dropout": 0.5},
    "ep30-acc-d64-drop5": {"train.max_epochs": 30, "train.patience": 3, "train.monitor": "accuracy", "model.embed_dim": 64, "model.dropout": 0.5},
    "ep30-acc-ngram1": {"train.max_epochs": 30, "train.patience": 3, "train.monitor": "accuracy", "model.bag.ngram": 1},
    "ep30-acc-bs32": {"train.max_epochs": 30, "train.patience": 3, "train.monitor": "accuracy", "train.batch_size": 32},
    "ep30-acc-pat5": {"train.max_epochs": 30, "train.patience": 5, "train.monitor": "accuracy"},
    "ep30-ls1": {"train.max_epochs": 30, "train.monitor": "loss", "train.label_smoothing": 0.1},
    "ep30-acc-md2": {"train.max_epochs": 30, "train.monitor": "accuracy", "train.min_delta": 0.002},
    "ep30-acc-ls1": {"train.max_epochs": 30, "train.patience": 3, "train.monitor": "accuracy", "train.label_smoothing": 0.1},
}


def override(params: Params, dotted: dict) -> Params:
    data = params.model_dump()
    for key, value in dotted.items():
        *path, leaf = key.split(".")
        node = data
        for part in path:
            node = node[part]
        if leaf not in node:
            raise KeyError(f"unknown param {key}")
        node[leaf] = value
    return Params.model_validate(data)


def prepare(name: str, work: Path) -> tuple[Path, dict]:
    """Download, tokenize and baseline once per dataset; cached in work/<name>."""
    from pipeline.stages.baseline import run_baseline
    from pipeline.stages.download import run_download
    from pipeline.stages.tokenize import run_tokenize

    folder = work / name
    done = folder / "prepared.json"
    if done.is_file():
        return folder, json.loads(done.read_text())
    if name == "ag-pairs":
        ag_pairs_source(work / f"{name}-source")
    if name.startswith("ag-titles"):
        ag_titles_source(work / f"{name}-source", titles_in="train" if name.endswith("-train") else "test")
    download = {k: v.format(work=work) if isinstance(v, str) else v for k, v in DATASETS[name].items()}
    params = override(Params(), {**{f"download.{k}": v for k, v in download.items()}, "tokenize.workers": 2})
    data = run_download(params.download, folder / "raw", folder / "data.json")
    if name.startswith("imdb-5k-short"):
        cut_to_short(folder / "raw", ("train", "validation") if name.endswith("-train") else ("test",))
    tokens = run_tokenize(params.tokenize, folder / "raw", folder / "processed", folder / "tokenize.json", progress=False)
    baseline = run_baseline(params.baseline, params.tokenize.language, folder / "raw", folder / "baseline.json")
    info = {"rows": {split: data[split]["rows"] for split in ("train", "validation", "test")},
            "vocab": tokens["vocab_size"], "baseline": baseline, "tokenize": tokenize_settings(params)}
    done.write_text(json.dumps(info))
    return folder, info


def ag_titles_source(folder: Path, titles_in: str) -> None:
    """AG News as train.csv and test.csv (a stratified, seeded 80/20 split of its 7,600 rows),
    with only the title as the text of `titles_in` and title + description in the other."""
    import pandas as pd

    frame = pd.read_csv(AG_NEWS["source"], header=None, names=AG_NEWS["column_names"], dtype=str, keep_default_na=False)
    test = ag_stratified_test_rows(frame)
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", ~test), ("test", test)):
        part = frame[rows]
        text = part["title"] if split == titles_in else part["title"] + " " + part["description"]
        pd.DataFrame({"text": text, "label": part["label"].map({str(k): v for k, v in AG_NEWS["label_names"].items()})}).to_csv(
            folder / f"{split}.csv", index=False)


def ag_stratified_test_rows(frame):
    """A stratified, seeded 20% of AG News' rows: the test split of the AG-derived sets."""
    import numpy as np

    rng = np.random.default_rng(0)
    test = np.zeros(len(frame), dtype=bool)
    for _, rows in frame.groupby("label").indices.items():
        test[rng.choice(rows, round(len(rows) * 0.2), replace=False)] = True
    return test


def ag_pairs_source(folder: Path) -> None:
    """A second multi-label set from real text: AG News items, and in PAIRED of the texts two
    items of different topics, labelled with both. Each item is used once (no item is in two
    texts, so none is in both the train and the validation split)."""
    import numpy as np
    import pandas as pd

    frame = pd.read_csv(AG_NEWS["source"], header=None, names=AG_NEWS["column_names"], dtype=str, keep_default_na=False)
    frame["text"] = frame["title"] + " " + frame["description"]
    frame["topic"] = frame["label"].map({str(k): v for k, v in AG_NEWS["label_names"].items()})
    test = ag_stratified_test_rows(frame)
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", ~test), ("test", test)):
        part = frame[rows].reset_index(drop=True)
        topic = part["topic"].to_numpy()
        used = np.zeros(len(part), dtype=bool)
        texts, labels = [], []
        for i in rng.permutation(len(part)):
            if used[i]:
                continue
            used[i] = True
            text, topics = part.at[i, "text"], [topic[i]]
            partners = np.flatnonzero(~used & (topic != topic[i]))
            if rng.random() < PAIRED and len(partners):
                j = partners[rng.integers(len(partners))]
                used[j] = True
                text, topics = f"{text} {part.at[j, 'text']}", [*topics, topic[j]]
            texts.append(text)
            labels.append("|".join(sorted(topics)))
        pd.DataFrame({"text": texts, "labels": labels}).to_csv(folder / f"{split}.csv", index=False)


def cut_to_short(raw: Path, splits: tuple[str, ...]) -> None:
    """Cut every text of `splits` to its first 15-25 words (seeded), in place."""
    import numpy as np

    from pipeline.data.raw import read_split, split_path, write_split

    rng = np.random.default_rng(0)
    for split in splits:
        columns = read_split(raw, split)
        keep = rng.integers(SHORT_WORDS[0], SHORT_WORDS[1] + 1, len(columns["text"]))
        columns["text"] = [" ".join(text.split()[:k]) for text, k in zip(columns["text"], keep)]
        import pandas as pd

        write_split(pd.DataFrame(columns), split_path(raw, split))


def tokenized(folder: Path, params: Params) -> Path:
    """The processed folder for these tokenize params: prepare()'s if it used the same ones,
    else one tokenized here once per distinct setting (cached beside it, named by a hash of the
    settings, so that a cache made under other defaults is never taken for these)."""
    from pipeline.stages.tokenize import run_tokenize

    settings = tokenize_settings(params)
    if json.loads((folder / "prepared.json").read_text()).get("tokenize") == settings:
        return folder / "processed"
    tag = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    processed = folder / f"processed-{tag}"
    if not (folder / f"tokenize-{tag}.json").is_file():
        run_tokenize(params.tokenize, folder / "raw", processed, folder / f"tokenize-{tag}.json", progress=False, arch=params.model.arch)
    return processed


def tokenize_settings(params: Params) -> dict:
    # workers change nothing in the output; a null min_freq is the architecture's
    return {**params.tokenize.model_dump(exclude={"workers"}), "min_freq": min_freq_for(params.tokenize, params.model.arch)}


def train_and_evaluate(folder: Path, overrides: dict, seed: int, threads: int = 2) -> dict:
    from pipeline.stages.evaluate import run_evaluate
    from pipeline.stages.train import run_train

    params = override(Params(), {**overrides, "train.seed": seed, "train.threads": threads, "tokenize.workers": 2})
    processed = tokenized(folder, params)
    run = folder / "run"
    shutil.rmtree(run, ignore_errors=True)
    trained = run_train(params, processed, run / "model", run / "train.json", run / "live", run / "resume", progress=False)
    scores = run_evaluate(params, run / "model" / "best.pt", processed, folder / "raw",
                          run / "evaluate.json", run / "confusion.csv", run / "errors.csv")
    losses = [float(line.split("\t")[1]) for line in (run / "live" / "plots" / "metrics" / "validation" / "loss.tsv").read_text().splitlines()[1:]]
    steps = [int(line.split("\t")[0]) for line in (run / "live" / "plots" / "metrics" / "validation" / "loss.tsv").read_text().splitlines()[1:]]
    chosen_loss = losses[steps.index(trained["best_step"])]
    return {"accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"], "best_epoch": trained["best_epoch"],
            "epochs": trained["epochs"], "steps": trained["steps"], "train_seconds": trained["wall_seconds"],
            "validation_loss_chosen": chosen_loss, "validation_loss_min": min(losses),
            "validation_loss_ratio": round(chosen_loss / min(losses), 4),
            "ece": scores["ece"], "ece_uncalibrated": scores["ece_uncalibrated"], "temperature": scores.get("temperature")}


def table(rows: list[dict]) -> str:
    configs = list(dict.fromkeys(r["config"] for r in rows))
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    lines = ["| dataset | baseline | " + " | ".join(configs) + " |", "|---|---|" + "---|" * len(configs)]
    for d in datasets:
        mine = [r for r in rows if r["dataset"] == d]
        cells = []
        for c in configs:
            accs = [f"{r['score']:.4f}" for r in mine if r["config"] == c]
            cells.append(" / ".join(accs) or "")
        lines.append(f"| {d} | {mine[0]['baseline_score']:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["imdb-2k", "ag", "ag-2k"], choices=list(DATASETS))
    parser.add_argument("--configs", nargs="+", default=["old", "shipped"], choices=list(CONFIGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/sweep"))
    parser.add_argument("--results", type=Path, default=Path("bench/defaults_sweep.jsonl"))
    args = parser.parse_args()

    rows = []
    for dataset in args.datasets:
        folder, info = prepare(dataset, args.work)
        for config in args.configs:
            for seed in args.seeds:
                started = time.perf_counter()
                result = train_and_evaluate(folder, CONFIGS[config], seed, args.threads)
                scored_by = "macro_f1" if DATASETS[dataset].get("task") == "multilabel" else "accuracy"
                row = {"dataset": dataset, "config": config, "seed": seed, **result,
                       "score": result[scored_by], "baseline_score": info["baseline"][scored_by], "scored_by": scored_by,
                       "baseline_accuracy": info["baseline"]["accuracy"], "baseline_macro_f1": info["baseline"]["macro_f1"],
                       "rows": info["rows"], "overrides": CONFIGS[config], "seconds": round(time.perf_counter() - started, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
                with args.results.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
