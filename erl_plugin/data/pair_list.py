"""The pair-list file: which rainy image goes with which clean image.

One pair per line, ``<lq><TAB><gt>``: relative paths (under ``dataroot_lq`` / ``dataroot_gt``) for
image folders, keys for LMDBs. A tab separates the two so that names may hold spaces; a line
without a tab is split on whitespace and must then give exactly two fields. Lines are written in a
stable order with ``\\n`` endings, so converting the same source twice gives identical files.
Blank lines and lines starting with ``#`` are ignored.
"""

import os
from collections.abc import Iterable

from erl_plugin.utils.outputs import write_text


class PairListError(ValueError):
    """A pair-list line that cannot be read; the message names the file and the line."""


def write_pair_list(path: str | os.PathLike[str], pairs: Iterable[tuple[str, str]]) -> None:
    """Write ``(lq, gt)`` pairs, one per line, in the order given."""
    lines = []
    for lq, gt in pairs:
        for name in (lq, gt):
            if not name or "\t" in name or "\n" in name:
                raise PairListError(f"{path}: cannot write the name {name!r} (empty, or holds a tab or newline)")
        lines.append(f"{lq}\t{gt}\n")
    write_text(path, "".join(lines))


def read_pair_list(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """Read ``(lq, gt)`` pairs; raise naming the file and line for a malformed one."""
    pairs = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.rstrip("\n")
            if not text.strip() or text.lstrip().startswith("#"):
                continue
            fields = text.split("\t") if "\t" in text else text.split()
            if len(fields) != 2 or not all(fields):
                raise PairListError(f"{path}:{number}: expected '<lq> <gt>', got {text!r}")
            pairs.append((fields[0], fields[1]))
    if not pairs:
        raise PairListError(f"{path}: no pairs")
    return pairs
