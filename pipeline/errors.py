"""The one exception type for mistakes a user can fix.

The CLI turns a PipelineError into one line on stderr and exit code 1. Anything
else is a bug and keeps its traceback.
"""


class PipelineError(Exception):
    """Bad input or bad params: the message names the problem and the fix."""


def first_line(exc: BaseException) -> str:
    """The first line of a library's exception message (or its type), for a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
