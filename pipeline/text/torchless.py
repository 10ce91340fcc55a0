"""Import this before spaCy in processes that must not load torch (`predict` and its workers).

spaCy imports thinc, and thinc imports torch whenever it is installed, only to offer
GPU interop we never use there: about a second of start-up and hundreds of MB. A None
entry in sys.modules makes `import torch` raise ImportError, which thinc handles.
Leaves a process that has already imported torch alone.
"""

import sys

if "torch" not in sys.modules:
    sys.modules["torch"] = None  # type: ignore[assignment]
