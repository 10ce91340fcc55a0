"""Finding texts that repeat within and across splits, judged on a normalized form."""

from __future__ import annotations

import pandas as pd

from pipeline.data.raw import SPLITS
from pipeline.data.splitting import stratum
from pipeline.errors import PipelineError
from pipeline.text.settings import HTML_TAG


def normalized(texts: pd.Series) -> pd.Series:
    """The form duplicates are judged on: HTML tags removed, case-folded, whitespace collapsed."""
    # One pass per text is 3x faster than three pandas .str passes (0.8 s for IMDB's 50,000 reviews).
    untag = HTML_TAG.sub
    return pd.Series([" ".join(untag(" ", text).casefold().split()) for text in texts], index=texts.index, dtype=object)


def deduplicate(frames: dict[str, pd.DataFrame], drop: bool) -> tuple[dict[str, pd.DataFrame], dict]:
    """Find texts that repeat (on their normalized form) and, if `drop`, remove the repeats.

    Within a split the first occurrence stays (test too: a repeated test text would be scored
    twice). Across splits test wins, then validation: a text in test leaves validation and train,
    a text in validation leaves train, so nothing evaluated was also trained on. Texts seen with
    more than one label (a label set, for multi-label data) are counted, not resolved: the
    surviving copy keeps its own labels.
    """
    keys = {split: normalized(frame["text"]) for split, frame in frames.items()}
    pairs = pd.DataFrame({
        "key": pd.concat(keys.values(), ignore_index=True),
        "label": pd.concat([frame["label"].map(stratum) for frame in frames.values()], ignore_index=True),
    }).drop_duplicates()
    counts = {}
    keep = {}
    for split in SPLITS:
        keep[split] = ~keys[split].duplicated() if split in keys else None
        counts[f"{split}_within"] = int((~keep[split]).sum()) if split in keys else 0
    for split, other in (("train", "test"), ("validation", "test"), ("train", "validation")):
        if split in keys and other in keys:
            found = keep[split] & keys[split].isin(keys[other][keep[other]])
            counts[f"{split}_in_{other}"] = int(found.sum())
            keep[split] &= ~found
        else:
            counts[f"{split}_in_{other}"] = 0
    counts["conflicting_labels"] = int(pairs["key"][pairs["key"].duplicated()].nunique())
    report = {"dropped": drop, **counts}
    if not drop:
        return frames, report
    kept = {}
    for split, frame in frames.items():
        kept[split] = frame[keep[split].to_numpy()].reset_index(drop=True)
        if kept[split].empty:
            raise PipelineError(
                f"every text in {split} also occurs in another split or repeats; "
                "check download.source and download.splits, or set download.dedup: false to keep them"
            )
    return kept, report
