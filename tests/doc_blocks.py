"""The fenced code blocks of a Markdown document, as the documentation tests read them.

A shell block the suite cannot run says why on the line above its fence
(``<!-- not run by the suite: REASON -->``); a block that the prose since the previous block
introduces with **`name`** at the start of a line is the file ``name``.
"""

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

from conftest import REPO

SHELL = ("bash", "sh")
SKIP = re.compile(r"^\s*<!-- not run by the suite: (?P<reason>.+?) -->\s*$")
FENCE = re.compile(r"^(?P<indent> *)```(?P<language>[\w-]*)\n(?P<body>.*?)^(?P=indent)```\s*$", re.M | re.S)
FILE_NAME = re.compile(r"^\*\*`(?P<name>[\w./-]+)`\*\*", re.M)


@dataclass(frozen=True)
class Block:
    """A fenced code block: where it is, its language, its text and, when it is not run, why."""

    document: Path
    line: int
    language: str
    text: str
    skip_reason: str | None
    file_name: str | None  # the file the text above it names with **`name`**

    @property
    def where(self) -> str:
        return f"{self.document.relative_to(REPO)}:{self.line}"


def blocks(document: Path) -> list[Block]:
    """The fenced blocks of ``document``, in order."""
    text = document.read_text(encoding="utf-8")
    found, previous_end = [], 0
    for match in FENCE.finditer(text):
        before = text[: match.start()].splitlines()
        previous = next((line for line in reversed(before) if line.strip()), "")
        skip = SKIP.match(previous)
        named = FILE_NAME.search(text, previous_end, match.start())  # the prose since the last block
        previous_end = match.end()
        found.append(
            Block(
                document=document,
                line=len(before) + 1,
                language=match["language"],
                text=textwrap.dedent(match["body"]),
                skip_reason=skip["reason"] if skip else None,
                file_name=named["name"] if named and not skip else None,
            )
        )
    return found
