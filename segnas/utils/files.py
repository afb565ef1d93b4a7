"""Atomic file writes and run-folder guards shared by every command.

A run folder is what a user keeps; segnas never leaves half a file in it and never overwrites one
without ``--force``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from segnas.errors import SegnasInputError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it onto ``path``.

    The rename is atomic on POSIX file systems, so a killed process leaves either the old file or the
    new one, never a truncated one.
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
        os.replace(tmp, path)
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
