"""The package version, importable by every layer without reaching up to ``cld_lake``."""

__version__ = "0.1.0"
