"""cld_lake: out-of-core CLD (Correlation of Loss Differences) coreset selection.

record (cld_lake.torch) -> lake -> score -> sql / select -> manifest -> train on the coreset.
``import cld_lake`` never imports torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

from cld_lake.errors import CldLakeError
from cld_lake.lake import Block, Lake, Split, SplitWriter, open_lake
from cld_lake.score import score  # the function; the subpackage stays importable by name

__all__ = [
    "Block",
    "CldLakeError",
    "Lake",
    "Split",
    "SplitWriter",
    "__version__",
    "open_lake",
    "score",
]
