"""The one exception type for mistakes a user can fix.

The CLI turns a PipelineError into one line on stderr and exit code 1. Anything
else is a bug and keeps its traceback.
"""


class PipelineError(Exception):
    """Bad input or bad params: the message names the problem and the fix."""
