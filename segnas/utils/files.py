"""Atomic, durable file writes and run-folder guards shared by every command.

A run folder is what a user keeps; segnas never leaves half a file in it and never overwrites one
without ``--force``. Files get the permissions the user's umask gives (0644 under the usual 022), as files
written by ``open`` do, so colleagues on a shared server can read predictions and reports.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from segnas.errors import SegnasInputError


@functools.cache
def file_mode() -> int:
    """The mode a new file gets under the process's umask (``0o666 & ~umask``). Python reads the umask only by
    setting it, so it is read once (set back at once) and kept."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def fsync_path(path: Path, directory: bool = False) -> None:
    """Flush ``path`` (a file's data, or a folder's entries) to the disk. File systems that cannot sync a folder
    (some network ones) refuse with ``EINVAL``/``ENOTSUP``: the rename is then as durable as they make it."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then move it onto ``path`` for good.

    The file gets the umask's permissions and is ``fsync``-ed before the rename, and the folder after it: a
    killed process leaves the old file or the new one, never a truncated one (the rename is atomic on POSIX file
    systems), and a power cut after the call returns leaves the new one (what each moment of a crash leaves:
    docs/reliability.md).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name ends with the target's name so that writers that pick a format from the
    # extension (nibabel: ".nii.gz" means gzip) write the right one.
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=f"-{path.name}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())  # mkstemp creates 0600 whatever the umask, and the rename keeps it
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent, directory=True)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def check_output_dir(path: str | Path, force: bool, what: str = "output directory") -> bool:
    """Refuse a non-directory, or a non-empty directory without ``force``; return whether it holds files."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SegnasInputError(f"{what} exists and is not a directory", path)
    ancestor = next(parent for parent in path.absolute().parents if parent.exists())
    if not ancestor.is_dir():
        raise SegnasInputError(f"{what} cannot be created: {ancestor} is a file, not a folder", path)
    if not os.access(ancestor, os.W_OK):
        raise SegnasInputError(f"{what} cannot be created: {ancestor} is not writable", path)
    occupied = path.is_dir() and any(path.iterdir())
    if occupied and not force:
        raise SegnasInputError(
            f"{what} already holds files from an earlier run; pass --force to overwrite it "
            "(or --resume where the command supports it)", path)
    return occupied


def prepare_output_dir(path: str | Path, force: bool, what: str = "output directory") -> Path:
    """Create ``path`` for a new run; refuse a non-empty one unless ``force`` (then it is emptied)."""
    path = Path(path)
    if check_output_dir(path, force, what):
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path
