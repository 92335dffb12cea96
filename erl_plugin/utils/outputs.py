"""The one way the project writes files: nothing followed, nothing replaced or deleted that is not its own.

Every file the tools, the training and the study write goes through here:

- :func:`write_file` writes one file through a fresh temporary sibling (``O_EXCL | O_NOFOLLOW``),
  fsynced and renamed into place: a reader sees the old file or the new one. It refuses a path that is a
  symbolic link, and an existing file unless asked to replace it. A full disk is a :class:`DiskFullError`
  naming the path.
- :class:`OutputFolder` is a folder a tool writes named files into (``--out``): its :data:`MARKER` lists
  the files the tools wrote there. An existing file is replaced only with ``overwrite`` and only when the
  marker lists it; a file of the user's beside them is never touched.
- :func:`staged_directory` builds a whole folder (an LMDB, a dataset) under a temporary sibling name and
  renames it into place when complete. ``--overwrite`` replaces only a folder whose marker lists every
  file in it.
- :func:`output_lock` holds ``<out>.lock`` while a run writes ``out`` (a tool's folder, an experiment).
  The lock records the temporary names the run creates; a later run that finds the lock of a dead process
  removes those names, and only those: nothing is deleted because its name matches a pattern.
- :func:`check_not_input` refuses an output that is an input, holds one, or lies inside one (symbolic
  links resolved first).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO

import cv2
import numpy as np

__all__ = [
    "MARKER",
    "DiskFullError",
    "OutputError",
    "OutputFolder",
    "check_not_input",
    "open_log",
    "output_lock",
    "staged_directory",
    "write_file",
    "write_text",
]

MARKER = ".erl_plugin_output"
"""File an output folder carries: the tool that wrote it and the files it wrote (``{"tool", "files"}``)."""

LOCK_OWNER = "erl_plugin"
"""The ``owner`` of every lock file the project writes; another ``<out>.lock`` is the user's."""


class OutputError(FileExistsError, ValueError):
    """An output that would cost an input, a user's file or another run's work; the message names the paths.

    Both a ``FileExistsError`` (as refusing an existing output always was) and a ``ValueError`` (bad
    arguments), so every tool's handler of either reports it.
    """


class DiskFullError(OSError):
    """The device ran out of space while writing; the message names the path and how to go on."""


# ------------------------------------------------------------------------------------ one file
def _refuse_link(path: Path, what: str = "output") -> None:
    if path.is_symlink():
        raise OutputError(
            f"{what} {path} is a symbolic link (to {os.readlink(path)}): the tools never write through a link; "
            "remove the link or choose another path"
        )


def _fsync_dir(folder: Path) -> None:
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not open folders; the rename is then as durable as they allow
        return
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_file(path: str | os.PathLike[str], data: bytes | memoryview, *, replace: bool = True) -> str:
    """Write ``data`` to ``path`` atomically and return the SHA-256 of the bytes; the folder is created.

    Args:
        path: The file. A symbolic link there is refused, never followed or replaced.
        data: The bytes.
        replace: Whether an existing file may be replaced (callers decide whose it is).

    Raises:
        OutputError: ``path`` is a link, a folder, or an existing file and ``replace`` is False.
        DiskFullError: No space left; nothing is left half-written.
    """
    path = Path(path)
    _refuse_link(path)
    if path.is_dir():
        raise OutputError(f"output {path} is a folder; choose a file name")
    if path.exists() and not replace:
        raise OutputError(f"{path} already exists; it is not replaced (pass --overwrite where the tool offers it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp opens with O_CREAT | O_EXCL | O_NOFOLLOW under a random name: nothing there is followed or reused.
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(
                error.errno,
                f"no space left on the device writing {path} ({len(data)} bytes); nothing was left half-written: "
                "free some space, then run the command again (a training: with --auto_resume)",
            ) from None
        raise
    _fsync_dir(path.parent)
    return hashlib.sha256(data).hexdigest()


def write_text(path: str | os.PathLike[str], text: str, *, replace: bool = True) -> str:
    """:func:`write_file` for UTF-8 text."""
    return write_file(path, text.encode("utf-8"), replace=replace)


def open_log(path: str | os.PathLike[str]) -> IO[str]:
    """Open a log file for appending (created with its folder), never through a link.

    Raises:
        OutputError: ``path`` is a link.
    """
    path = Path(path)
    _refuse_link(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    return os.fdopen(descriptor, "a", encoding="utf-8")


# ---------------------------------------------------------------------------------- overlaps
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


# ------------------------------------------------------------------------------------- locks
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _named(folder: Path) -> Path:
    """``folder`` with a last component that names it (``.`` and ``..`` resolved)."""
    return folder.resolve() if folder.name in ("", ".", "..") else folder


def _read_lock(lock: Path) -> dict | None:
    """The record of a lock this project wrote, or None for any other file of that name."""
    try:
        record = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("owner") != LOCK_OWNER or not isinstance(record.get("pid"), int):
        return None
    return record


def _clean_up_after(record: dict, lock: Path, out: Path) -> None:
    """Remove what a dead run recorded it would create (and nothing else); put a moved-aside folder back."""
    for name in record.get("creates", []):
        leftover = lock.parent / name
        if Path(name).name != name or not leftover.exists() or leftover.is_symlink():
            continue
        if name.startswith(f"{out.name}.old-") and not out.exists():
            # The run died between moving the previous folder aside and renaming the new one in.
            os.rename(leftover, out)
            print(f"note: restored {out} from {name}, left by an interrupted run", file=sys.stderr)
            continue
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()
        print(f"note: removed {leftover}, left by an interrupted run (pid {record['pid']})", file=sys.stderr)


@contextlib.contextmanager
def output_lock(out: str | os.PathLike[str], creates: Iterable[str] = ()) -> Iterator[None]:
    """Hold ``<out>.lock`` for the block; refuse while another live run holds it.

    Args:
        out: The folder the run writes.
        creates: Names (siblings of ``out``) the run may create and leave behind if killed; the lock
            records them, and the run that takes over a dead run's lock removes exactly those.

    Raises:
        OutputError: Another live run holds the lock, or ``<out>.lock`` is not a lock of this project.
    """
    out = _named(Path(out))
    lock = out.with_name(f"{out.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    record = {"owner": LOCK_OWNER, "pid": os.getpid(), "host": socket.gethostname(), "creates": list(creates)}
    for _ in range(2):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o644)
            break
        except FileExistsError:
            held = _read_lock(lock)
            if held is None:
                raise OutputError(
                    f"{lock} exists and is not a lock of this project; it is left alone: move it, or choose "
                    f"another output than {out}"
                ) from None
            if held.get("host") != record["host"] or _alive(held["pid"]):
                raise OutputError(
                    f"another run (pid {held['pid']} on {held.get('host')}) is writing {out}; wait for it to end, "
                    f"or remove {lock} if no such run exists"
                ) from None
            print(
                f"note: {lock} was left by a run that no longer exists (pid {held['pid']}); taking it over",
                file=sys.stderr,
            )
            _clean_up_after(held, lock, out)
            lock.unlink(missing_ok=True)
    else:
        raise OutputError(f"cannot take the lock {lock}")
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    try:
        yield
    finally:
        if _read_lock(lock) == record:
            lock.unlink()


# ---------------------------------------------------------------------------- marked folders
def _read_marker(folder: Path) -> dict | None:
    marker = folder / MARKER
    if marker.is_symlink() or not marker.is_file():
        return None
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("files"), list) else None


def _files_in(folder: Path) -> Iterator[tuple[str, Path]]:
    """``(relative name, path)`` of every entry that is not a folder (links included), never following links."""
    for root, folders, files in os.walk(folder):
        for name in files + [f for f in folders if os.path.islink(os.path.join(root, f))]:
            path = Path(root) / name
            yield path.relative_to(folder).as_posix(), path


def _foreign_file(folder: Path, listed: Iterable[str]) -> str | None:
    """The first file in ``folder`` that its marker does not list as the tools' (or that is a link)."""
    own = set(listed) | {MARKER}
    for name, path in _files_in(folder):
        if name not in own or path.is_symlink():
            return name
    return None


class OutputFolder:
    """A folder a tool writes named files into (``--out``), as a context manager holding its lock.

    The folder may exist and hold other files: the tool writes only its own names, checked before any
    work (:meth:`claim`). An existing file is replaced only when ``overwrite`` is given and the folder's
    :data:`MARKER` lists it as written by the tools; a link is never written through.

    Args:
        path: The folder.
        tool: Recorded in the marker.
        overwrite: Replace the tools' own files from an earlier run.
        inputs: What the run reads: the folder may not be one, hold one or lie inside one.

    Example:
        >>> with OutputFolder("out", tool="evaluate", inputs=["data"]) as out:  # doctest: +SKIP
        ...     out.claim(["summary.md"])
        ...     out.write_text("summary.md", table)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        tool: str,
        overwrite: bool = False,
        inputs: Sequence[str | os.PathLike[str]] = (),
    ) -> None:
        self.path = Path(path)
        self.tool = tool
        self.overwrite = overwrite
        self.files: set[str] = set()
        self._listed: set[str] = set()
        check_not_input(self.path, inputs, "output folder")
        if self.path.exists() and not self.path.is_dir():
            raise OutputError(f"output folder {self.path} is a file; choose a folder")
        self._lock = contextlib.ExitStack()

    def __enter__(self) -> OutputFolder:
        self._lock.enter_context(output_lock(self.path))
        try:
            _refuse_link(self.path / MARKER)
            marker = _read_marker(self.path)
        except BaseException:
            self._lock.close()
            raise
        self.files = set(marker["files"]) if marker else set()
        self._listed = set(self.files)
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self.files != self._listed:  # once per run: a folder of many outputs is not rewritten per file
                write_text(self.path / MARKER, json.dumps({"tool": self.tool, "files": sorted(self.files)}) + "\n")
        finally:
            self._lock.close()

    def _check(self, name: str) -> Path:
        target = self.path / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise OutputError(f"{name}: an output name must stay inside {self.path}")
        _refuse_link(target)
        if target.exists():
            if name not in self.files:
                raise OutputError(
                    f"{target} exists and was not written by the tools (not listed in {self.path / MARKER}): "
                    "it is never replaced; move it, or choose another output folder"
                )
            if not self.overwrite:
                raise OutputError(f"{target} exists (an earlier run's); pass --overwrite to replace it")
        return target

    def claim(self, names: Iterable[str]) -> None:
        """Check, before any work, that every one of ``names`` may be written."""
        for name in names:
            self._check(name)

    def write(self, name: str, data: bytes | memoryview) -> Path:
        """Write ``data`` as ``<folder>/<name>`` (through :func:`write_file`); the marker lists it when the block
        ends (a run killed before that leaves it unlisted: refused, never replaced, by the next)."""
        target = self._check(name)
        write_file(target, data)
        self.files.add(name)
        return target

    def write_text(self, name: str, text: str) -> Path:
        """:meth:`write` for UTF-8 text."""
        return self.write(name, text.encode("utf-8"))

    def write_image(self, name: str, image: np.ndarray) -> Path:
        """:meth:`write` for an image, encoded by the name's extension (``.png``, ``.jpg``...)."""
        encoded, buffer = cv2.imencode(Path(name).suffix, image)
        if not encoded:
            raise OutputError(f"{self.path / name}: cannot encode a {image.dtype} image of shape {image.shape}")
        return self.write(name, buffer.tobytes())


# ---------------------------------------------------------------------------- staged folders
@contextlib.contextmanager
def staged_directory(
    final: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike[str]] = (),
    tool: str = "erl_plugin",
) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``final`` that becomes ``final`` when the block succeeds.

    The temporary folder is ``<final>.tmp-<pid>``. When the block succeeds its :data:`MARKER` lists every
    file in it and it is renamed to ``final``; if the block raises (KeyboardInterrupt included) it is
    deleted and ``final`` is left as it was. The run holds :func:`output_lock` throughout, which records
    the temporary names, so that a run killed midway leaves nothing the next run does not know to remove.

    Args:
        final: Folder to create.
        overwrite: Replace an existing non-empty ``final`` whose marker lists every file in it. An
            existing empty folder is always replaced.
        inputs: What the run reads: ``final`` may not be one, hold one or lie inside one.
        tool: Recorded in the marker.

    Raises:
        OutputError: ``final`` overlaps an input, another run writes it, or ``overwrite`` would replace a
            folder, or a file in it, that this project did not write.
        FileExistsError: ``final`` is a file, or a non-empty folder and ``overwrite`` is False.
    """
    final = _named(Path(final))
    check_not_input(final, inputs)
    _refuse_link(final)
    if final.exists() and not final.is_dir():
        raise FileExistsError(f"{final} exists and is not a folder; remove it or choose another path")
    temporary = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    previous = final.with_name(f"{final.name}.old-{os.getpid()}")
    with output_lock(final, creates=[temporary.name, previous.name]):
        if final.is_dir() and any(final.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{final} already exists and is not empty; pass --overwrite to replace it")
            marker = _read_marker(final)
            if marker is None:
                raise OutputError(
                    f"{final} was not written by this project (it has no readable {MARKER}): --overwrite replaces "
                    "only what the tools wrote; remove it yourself or choose another path"
                )
            foreign = _foreign_file(final, marker["files"])
            if foreign is not None:
                raise OutputError(
                    f"{final / foreign} was not written by the tools (not listed in {final / MARKER}): "
                    "--overwrite would delete it with the folder; move it out, or choose another path"
                )
        for leftover in (temporary, previous):  # only this pid's names, recorded in the lock
            if leftover.exists() and not leftover.is_symlink():
                shutil.rmtree(leftover)
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary.mkdir()
        try:
            yield temporary
            files = sorted(name for name, _ in _files_in(temporary))
            write_text(temporary / MARKER, json.dumps({"tool": tool, "files": files}) + "\n")
            if final.exists():
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
