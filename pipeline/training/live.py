"""What a run shows while it trains: the curves (DVCLive's file layout, which `dvc plots`
reads; optionally TensorBoard event files beside them) and the console.

The curves are written by this module, not by DVCLive: one TSV per series under
<folder>/plots/metrics/ (e.g. validation/accuracy.tsv with the columns `step` and `accuracy`;
samples/s, a timing, beside reports/runtime/train.json instead),
rewritten whole after every validation from the run's history, so that a resumed run and an
uninterrupted one write the same bytes and a kill never leaves half a row. DVCLive's own
writer is not used because it reaches DVC and git through private hooks and this is all we
need of it.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.files import atomic_file

CURVES = Path("plots") / "metrics"  # under the curves folder, as DVCLive lays it out
TENSORBOARD = "tensorboard"  # event files' folder inside the curves folder (train.tensorboard)
# series of the machine's speed, not of the model: kept apart (the runtime folder), so that the
# curves of identical runs are identical files
TIMING_SERIES = {"samples_per_second"}


class Curves:
    """One TSV per logged series, rewritten from the history after each validation; and, with
    `tensorboard`, the same points as TensorBoard scalars. A resumed run replays its history."""

    def __init__(self, folder: Path, history: list[dict[str, float]], tensorboard: bool = False, timing_folder: Path | None = None):
        self.folder, self.history, self.writer, self.timing_folder = folder, list(history), None, timing_folder
        for old in (folder / CURVES, timing_folder):  # what an earlier run left
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise PipelineError(
                    "train.tensorboard is true but the tensorboard package is missing: pip install tensorboard "
                    "(or pip install -e '.[tensorboard]'), or set train.tensorboard to false"
                ) from None
            events = folder / TENSORBOARD
            shutil.rmtree(events, ignore_errors=True)  # a resumed run replays its history into fresh files
            self.writer = SummaryWriter(str(events))
            for record in self.history:
                self._add_scalars(record)
        if self.history:
            self._write()

    def log(self, record: dict[str, float]) -> None:
        self.history.append(record)
        self._add_scalars(record)
        self._write()

    def _add_scalars(self, record: dict[str, float]) -> None:
        if self.writer is not None:
            for name, value in record.items():
                if name != "step":
                    self.writer.add_scalar(name, value, int(record["step"]))

    def _write(self) -> None:
        for name in [key for key in self.history[-1] if key != "step"]:
            if name in TIMING_SERIES and self.timing_folder is None:
                continue
            path = (self.timing_folder if name in TIMING_SERIES else self.folder / CURVES) / f"{name}.tsv"
            rows = [f"{int(record['step'])}\t{record[name]}" for record in self.history if name in record]
            with atomic_file(path) as handle:
                handle.write("\n".join([f"step\t{Path(name).name}", *rows]) + "\n")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Console:
    """A progress bar with loss and samples/s on a terminal; plain lines otherwise."""

    def __init__(self, enabled: bool | None):
        self.interactive = sys.stderr.isatty() if enabled is None else enabled
        self.bar = None
        self.shown = 0  # batches of this epoch the bar shows

    def start_epoch(self, epoch: int, epochs: int, total: int, done: int) -> None:
        self.shown = done
        if self.interactive:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False)

    def advance(self, batches: int, loss: float, samples_per_second: float) -> None:
        self.shown += batches
        if self.bar is not None:
            self.bar.update(batches)
            self.bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{samples_per_second:,.0f}", refresh=False)

    def end_epoch(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)


LONG_EPOCH_SECONDS = 180.0  # an epoch expected to last longer is announced, with the run's length, from its first steps
ESTIMATE_STEPS, ESTIMATE_SECONDS = 5, 20.0  # measured over this many steps (at least 2 s) or this many seconds, after the first


def duration(seconds: float) -> str:
    """42 s, 23 min, 1 h 9 min."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


class EpochEstimate:
    """The expected time of an epoch, from the samples/s of the first steps this process takes
    (the very first step, which allocates and warms up, is left out); said once, if it is long."""

    def __init__(self, documents: int, epochs: int):
        self.documents, self.epochs = documents, epochs
        self.start: tuple[int, float] | None = None
        self.steps, self.done = 0, False

    def update(self, samples: int, seconds: float) -> str | None:
        """After each optimizer step, the run's samples and training seconds so far; returns the
        line to print, once."""
        if self.done:
            return None
        if self.start is None:
            self.start = (samples, seconds)
            return None
        self.steps += 1
        counted, elapsed = samples - self.start[0], seconds - self.start[1]
        if not (elapsed >= ESTIMATE_SECONDS or (self.steps >= ESTIMATE_STEPS and elapsed >= 2.0)):
            return None
        self.done = True
        rate = counted / max(elapsed, 1e-9)
        epoch = self.documents / max(rate, 1e-9)
        if epoch < LONG_EPOCH_SECONDS:
            return None
        return (f"train: an epoch will take about {duration(epoch)} ({rate:,.1f} samples/s over the first {self.steps + 1} steps); "
                f"up to {self.epochs} epoch{'s' if self.epochs != 1 else ''}: about {duration(epoch * self.epochs)} (early stopping may end it sooner)")
