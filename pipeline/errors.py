"""The one exception type for mistakes a user can fix.

The CLI turns a PipelineError into one line on stderr and exit code 1. Anything
else is a bug and keeps its traceback.
"""

import sys
from collections.abc import Iterable


class PipelineError(Exception):
    """Bad input or bad params: the message names the problem and the fix."""


def warn(message: str) -> None:
    """One `warning: ...` line on stderr: the run goes on, but the user should know."""
    print(f"warning: {message}", file=sys.stderr)


def first_line(exc: BaseException) -> str:
    """The first line of a library's exception message (or its type), for a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def clip(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters: messages that quote user data must stay one readable line."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def listed(items: Iterable[object], limit: int = 10, quote: bool = False) -> str:
    """At most `limit` items, each clipped, then '…and N more' (a header can have a million columns)."""
    items = list(items)
    shown = [clip(repr(item) if quote else str(item)) for item in items[:limit]]
    if len(items) > limit:
        shown.append(f"…and {len(items) - limit} more")
    return ", ".join(shown)
