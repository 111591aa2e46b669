"""cld_lake: out-of-core CLD (Correlation of Loss Differences) coreset selection.

record (cld_lake.torch) -> lake -> score -> sql / select -> manifest -> train on the coreset.
``import cld_lake`` never imports torch.
"""

from __future__ import annotations

from cld_lake._version import __version__
from cld_lake.errors import CldLakeError
from cld_lake.lake import Block, Lake, Split, SplitWriter, import_file, open_lake
from cld_lake.manifest import Manifest, load_manifest
from cld_lake.score import (
    CLDAccumulator,
    cld_reference,
    score,  # the function; the subpackage stays importable by name
)
from cld_lake.select import select  # the function (module: cld_lake.select)

__all__ = [
    "Block",
    "CLDAccumulator",
    "CldLakeError",
    "Lake",
    "Manifest",
    "Split",
    "SplitWriter",
    "__version__",
    "import_file",
    "cld_reference",
    "load_manifest",
    "open_lake",
    "score",
    "select",
]
