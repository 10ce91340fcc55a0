"""The settings that turn a text into tokens (text.json), and truncation: shared by both
tokenizers, the tokenize stage and inference."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

from pipeline.params import TokenizeParams

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
HTML_TAG = re.compile(r"<[^>]{1,40}>")


TRUNCATIONS = ("head", "head_tail")


@dataclass(frozen=True, kw_only=True)
class TextSettings:
    """What turns a text into tokens; saved beside the vocabulary (text.json) so inference
    repeats it exactly. `tokenizer` "spacy": spaCy's rules for `language`, `lowercase`;
    "pretrained": the model's own tokenizer, tokenizer.json beside text.json (language and
    lowercase are then None: that tokenizer decides). A text.json written before `truncation`
    and `tokenizer` existed reads as head truncation by spaCy, which is what it was."""

    language: str | None = None
    lowercase: bool | None = None
    strip_html: bool
    max_tokens: int
    truncation: str = "head"  # head | head_tail (see `truncate`)
    tokenizer: str = "spacy"  # spacy | pretrained

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None}

    @property
    def in_worker_processes(self) -> bool:
        """Whether large inputs are tokenized in worker processes (`Workers`): spaCy holds the GIL;
        a pretrained model's tokenizer spreads each batch over every core by itself."""
        return self.tokenizer == "spacy"

    def clean(self, text: str) -> str:
        """The text as the tokenizer reads it: HTML tags replaced by a space when `strip_html`."""
        return HTML_TAG.sub(" ", text) if self.strip_html else text


def truncate(tokens: np.ndarray, budget: int, truncation: str) -> np.ndarray:
    """At most `budget` tokens: the first ones (head), or the first quarter and the last three
    quarters (head_tail: Sun et al. 2019 found head 128 + tail 382 best for long IMDB reviews,
    whose verdict is often at the end)."""
    if len(tokens) <= budget:
        return tokens
    if truncation == "head_tail":
        head = budget // 4
        return np.concatenate([tokens[:head], tokens[len(tokens) - (budget - head) :]])
    return tokens[:budget]


SURROGATE = re.compile("[\ud800-\udfff]")


def valid_unicode(text: str) -> tuple[str, int]:
    """`text` with every lone surrogate replaced by U+FFFD, and how many there were: the one
    rule for text that is not valid Unicode, everywhere (download, predict, serve). They come
    from broken JSON escapes ("\\ud800") and from bytes a command line could not decode; no
    tokenizer, file or response can carry them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return SURROGATE.subn("\ufffd", text)
    return text, 0


# tokenize.max_tokens null with spaCy (IMDB: 3% of reviews are longer); a pretrained model's
# null is its own input limit (subwords.pretrained_tokenizer)
SPACY_MAX_TOKENS = 1000


def spacy_settings(params: TokenizeParams) -> TextSettings:
    """The settings of the spaCy tokenizer for these tokenize params."""
    return TextSettings(
        language=params.language, lowercase=params.lowercase, strip_html=params.strip_html,
        max_tokens=params.max_tokens if params.max_tokens is not None else SPACY_MAX_TOKENS, truncation=params.truncation,
    )
