"""Paired deraining data sets as they lie on disk."""

import os
import re
from dataclasses import dataclass

_RAINY_NAME = re.compile(r"rain-([1-9][0-9]*)\.(png|jpg|jpeg|bmp)", re.IGNORECASE)


@dataclass(frozen=True)
class Pair:
    """One rainy image and its clean target (file paths); ``number`` is the N of ``rain-N``."""

    number: int
    rainy: str
    clean: str

    @property
    def name(self) -> str:
        return f"rain-{self.number}"


def raintrainh_pairs(folder: str | os.PathLike[str]) -> list[Pair]:
    """``rain-N.png`` with ``norain-N.png`` in one folder, sorted by N.

    This is the layout of RainTrainH (Rain100H's training set) and of the synthetic rain data.

    Raises:
        FileNotFoundError: ``folder`` is missing, holds no ``rain-N`` image, or one lacks its
            ``norain-N`` twin (both files named).
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: not a directory")
    pairs = []
    for name in os.listdir(folder):
        match = _RAINY_NAME.fullmatch(name)
        if match:
            rainy, clean = os.path.join(folder, name), os.path.join(folder, f"no{name}")
            if not os.path.isfile(clean):
                raise FileNotFoundError(f"{rainy} has no clean image {clean}")
            pairs.append(Pair(int(match.group(1)), rainy, clean))
    if not pairs:
        raise FileNotFoundError(f"{folder}: no rain-N.png / norain-N.png pairs")
    return sorted(pairs, key=lambda pair: pair.number)
