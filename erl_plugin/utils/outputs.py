"""Output folders that never cost an input: overlap checks, ownership markers, locks, leftover cleanup.

Every tool that writes a folder goes through here:

- :func:`check_not_input` refuses an output folder that is an input, holds one, or lies inside one
  (with or without ``--overwrite``), naming both paths;
- :func:`output_lock` takes ``<out>.lock`` for the run, so a second run writing the same folder is refused
  while the first lives (a lock whose process is gone is taken over);
- :func:`staged_directory` builds a folder under a temporary sibling name and renames it into place when
  complete. ``--overwrite`` replaces only a folder this project wrote (it carries :data:`MARKER`), and
  temporary folders left by killed runs are removed, and reported, on the next run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["MARKER", "OutputError", "check_not_input", "output_lock", "staged_directory"]

MARKER = ".erl_plugin_output"
"""File a staged output folder carries: written by this project, so ``--overwrite`` may replace it."""

_LEFTOVER = re.compile(r"\.(tmp|old)-(\d+)$")


class OutputError(FileExistsError, ValueError):
    """An output that would cost an input or another run's work; the message names the paths.

    Both a ``FileExistsError`` (as refusing an existing output always was) and a ``ValueError`` (bad
    arguments), so every tool's handler of either reports it.
    """


def check_not_input(
    out: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]], what: str = "output"
) -> None:
    """Refuse ``out`` when it is one of ``inputs``, holds one, or lies inside an input folder.

    Raises:
        OutputError: Naming the output and the input.
    """
    target = Path(out).resolve()
    for source in inputs:
        resolved = Path(source).resolve()
        if target == resolved:
            problem = "is the input"
        elif target in resolved.parents:
            problem = "holds the input"
        elif resolved in target.parents:
            problem = "lies inside the input"
        else:
            continue
        raise OutputError(
            f"{what} {os.fspath(out)} {problem} {os.fspath(source)}: writing there could destroy or mix with "
            "the input, with or without --overwrite; choose an output folder outside the inputs"
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def output_lock(out: str | os.PathLike[str]) -> Iterator[None]:
    """Hold ``<out>.lock`` (holding this process's pid) for the block; refuse while another live run holds it.

    Raises:
        OutputError: Another process that still runs holds the lock.
    """
    out = Path(out)
    lock = out.with_name(f"{out.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                holder = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                holder = 0
            if holder and _alive(holder):
                raise OutputError(
                    f"another run (pid {holder}) is writing {out}; wait for it to end, or remove {lock} if "
                    "no such run exists"
                ) from None
            print(
                f"note: {lock} was left by a run that no longer exists (pid {holder}); taking it over", file=sys.stderr
            )
            lock.unlink(missing_ok=True)
    else:
        raise OutputError(f"cannot take the lock {lock}")
    with os.fdopen(descriptor, "w") as handle:
        handle.write(f"{os.getpid()}\n")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _remove_leftovers(final: Path) -> None:
    """Delete ``<final>.tmp-<pid>`` / ``.old-<pid>`` siblings of runs that no longer exist, reporting each."""
    if not final.parent.is_dir():
        return
    for sibling in final.parent.iterdir():
        if not sibling.name.startswith(f"{final.name}."):
            continue
        match = _LEFTOVER.fullmatch(sibling.name[len(final.name) :])
        if match is None or _alive(int(match.group(2))) and int(match.group(2)) != os.getpid():
            continue
        if match.group(1) == "old" and not final.exists():
            # A run died between moving the previous folder aside and renaming the new one in: put it back.
            os.rename(sibling, final)
            print(f"note: restored {final} from {sibling.name}, left by an interrupted run", file=sys.stderr)
            continue
        shutil.rmtree(sibling, ignore_errors=True)
        print(f"note: removed {sibling}, left by an interrupted run (pid {match.group(2)})", file=sys.stderr)


@contextlib.contextmanager
def staged_directory(
    final: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike[str]] = (),
    tool: str = "erl_plugin",
) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``final`` that becomes ``final`` when the block succeeds.

    The temporary folder is ``<final>.tmp-<pid>``; it receives :data:`MARKER` (naming ``tool``). If the
    block raises (KeyboardInterrupt included) it is deleted and ``final`` is left as it was. An existing
    ``final`` is replaced only on success. The run holds :func:`output_lock` throughout.

    Args:
        final: Folder to create.
        overwrite: Replace an existing non-empty ``final`` that carries :data:`MARKER`. An existing empty
            folder is always replaced.
        inputs: What the run reads: ``final`` may not be one, hold one or lie inside one.
        tool: Recorded in the marker.

    Raises:
        OutputError: ``final`` overlaps an input, another run writes it, or ``overwrite`` would replace a
            folder this project did not write.
        FileExistsError: ``final`` is a file, or a non-empty folder and ``overwrite`` is False.
    """
    final = Path(final)
    check_not_input(final, inputs)
    if final.exists() and not final.is_dir():
        raise FileExistsError(f"{final} exists and is not a folder; remove it or choose another path")
    with output_lock(final):
        _remove_leftovers(final)
        if final.is_dir() and any(final.iterdir()):
            if not overwrite:
                raise FileExistsError(
                    f"{final} already exists and is not empty; pass overwrite=True (--overwrite) to replace it"
                )
            if not (final / MARKER).is_file():
                raise OutputError(
                    f"{final} was not written by this project (it has no {MARKER}): --overwrite replaces only "
                    "what the tools wrote; remove it yourself or choose another path"
                )
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = final.with_name(f"{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(temporary, ignore_errors=True)  # only an earlier process with this pid can have left it
        temporary.mkdir()
        (temporary / MARKER).write_text(json.dumps({"tool": tool}) + "\n")  # no time or pid: outputs stay reproducible
        try:
            yield temporary
            if final.exists():
                previous = final.with_name(f"{final.name}.old-{os.getpid()}")
                os.rename(final, previous)
                try:
                    os.rename(temporary, final)
                except BaseException:
                    os.rename(previous, final)
                    raise
                shutil.rmtree(previous)
            else:
                os.rename(temporary, final)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
