"""The code blocks of README.md and docs/*.md, and how each one runs (tests/test_docs_examples.py).

A fenced block tagged ``bash`` or ``python`` is an example; ``text`` is a synopsis, a formula or
printed output; an untagged fence is refused (a reader cannot tell which it is). A comment on
the line right before a fence says how the block runs:

- ``<!-- example: skip REASON -->``: not run; the reason is required and is shown by the test.
- ``<!-- example: output -->`` (before a ``text`` block): every non-blank line of the block is
  printed by the example right before it (whitespace-normalised).
- ``<!-- example: s3 -->``: runs with an S3 server on 127.0.0.1 in the environment (moto),
  the bucket the example names created first.
- ``<!-- example: shrink ARGS -->``: ARGS appended to each ``python -m pipelines.`` command of
  the block, so a training run the text shows at full size runs small here (a later flag wins).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

EXAMPLE_LANGS = ("bash", "python")
LANGS = (*EXAMPLE_LANGS, "text")
DIRECTIVES = ("skip", "output", "s3", "shrink")
_FENCE = re.compile(r"^```(\S*)\s*$")
_DIRECTIVE = re.compile(r"^<!--\s*example:\s*(\w+)\s*(.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block of a Markdown file."""

    doc: str
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    directive: str | None = None
    argument: str = ""

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def is_example(self) -> bool:
        return self.lang in EXAMPLE_LANGS


class FormatError(ValueError):
    """A Markdown file's fences or directives cannot be read unambiguously."""


def parse(text: str, doc: str) -> list[Block]:
    """Every fenced block of ``text`` with the directive on the line before it."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        lang, start = m.group(1), i
        end = next((j for j in range(i + 1, len(lines)) if lines[j].rstrip() == "```"), None)
        if end is None:
            raise FormatError(f"{doc}:{start + 1}: the fence is never closed")
        if lang not in LANGS:
            raise FormatError(
                f"{doc}:{start + 1}: fence tagged {lang!r}; tag it {', '.join(LANGS)} "
                "(bash/python blocks are run by tests/test_docs_examples.py)"
            )
        directive, argument = _directive(lines[start - 1] if start else "", doc, start)
        code = "\n".join(lines[start + 1 : end]) + "\n"
        blocks.append(Block(doc, start + 1, lang, code, directive, argument))
        i = end + 1
    return blocks


def _directive(line: str, doc: str, fence: int) -> tuple[str | None, str]:
    if "example:" not in line:
        return None, ""
    m = _DIRECTIVE.match(line.strip())
    if not m or m.group(1) not in DIRECTIVES:
        raise FormatError(
            f"{doc}:{fence}: unreadable directive {line.strip()!r}; write "
            f"<!-- example: {'|'.join(DIRECTIVES)} ... -->"
        )
    word, argument = m.group(1), m.group(2)
    if word == "skip" and not argument:
        raise FormatError(
            f"{doc}:{fence}: a skipped example must say why: <!-- example: skip WHY -->"
        )
    return word, argument


def read(path: Path, root: Path) -> list[Block]:
    return parse(path.read_text(encoding="utf-8"), str(path.relative_to(root)))


def shrunk(code: str, args: str) -> str:
    """``code`` with ``args`` appended to every ``python -m pipelines.`` command line."""
    out = []
    for line in code.splitlines():
        if re.match(r"^\s*python -m pipelines\.", line):
            command, hash_, comment = line.partition("  #")
            line = f"{command.rstrip()} {args}" + (f"  #{comment}" if hash_ else "")
        out.append(line)
    return "\n".join(out) + "\n"


def expected_lines(block: Block) -> list[str]:
    return [" ".join(line.split()) for line in block.code.splitlines() if line.strip()]


def printed(expected: list[str], stdout: str) -> list[str]:
    """The expected lines that ``stdout`` does not show (whitespace-normalised)."""
    shown = {" ".join(line.split()) for line in stdout.splitlines()}
    return [line for line in expected if line not in shown]
