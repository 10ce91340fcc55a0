"""What null means for the train keys below, per architecture: the training recipe.

Kept here, beside the training code and not in params.py, so that the train stage depends
on it (dvc.yaml): editing a row reruns training instead of serving a cached model trained
with the old value. An explicit value in params.yaml always wins.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from pipeline.params import Params


@dataclass(frozen=True)
class TrainDefaults:
    lr: float
    batch_size: int
    max_epochs: int
    warmup: float  # epochs
    weight_decay: float
    schedule: str
    join_texts: float = 0.0  # joined texts each epoch adds, as a share of the train texts (train.join_texts)


# From scratch: the defaults BENCHMARKS.md measured; max_epochs is a cap, early stopping ends
# the run, so nothing may depend on it: after warmup the lr halves at each validation that does
# not improve (plateau), whatever the cap (issue 22: linear decay to 0 at the cap was 0.84x the
# peak when runs stopped; plateau is at or above it on 7 of 8 sweep sets, BENCHMARKS.md).
# Fine-tuning: the usual BERT recipe (Devlin et al. 2019; Sun et al. 2019): a small lr, warmup
# over 10% of 3 epochs, linear decay over them (there the cap is the budget).
FROM_SCRATCH = TrainDefaults(lr=0.01, batch_size=64, max_epochs=30, warmup=1.5, weight_decay=0.01, schedule="plateau")
ARCH_TRAIN_DEFAULTS: dict[str, TrainDefaults] = {
    # bag: 0.01 overfits large data within 2 epochs (IMDB 0.9025 vs 0.9112 at 0.005, BENCHMARKS.md "Defaults")
    "bag": replace(FROM_SCRATCH, lr=0.005),
    "cnn": FROM_SCRATCH,
    "lstm": FROM_SCRATCH,
    "transformer": FROM_SCRATCH,
    "pretrained": TrainDefaults(lr=5e-5, batch_size=32, max_epochs=3, warmup=0.3, weight_decay=0.01, schedule="linear"),
}
RESOLVED_KEYS = [field.name for field in fields(TrainDefaults)]  # the train keys whose null means "the arch's default"


def resolved(params: Params) -> Params:
    """The params as they run: train's nulls replaced by `model.arch`'s defaults."""
    defaults = asdict(ARCH_TRAIN_DEFAULTS[params.model.arch])
    train = params.train.model_copy(update={key: value for key, value in defaults.items() if getattr(params.train, key) is None})
    return params.model_copy(update={"train": train})
