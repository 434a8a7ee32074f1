"""Atomic file output: every file the toolkit writes goes through here.

A crash or Ctrl-C while writing leaves the previous file intact, never a truncated one:
data goes to a temporary file in the same directory, is flushed to disk, then renamed
over the target (rename is atomic on POSIX and Windows within one filesystem).

`output_dir` and `output_file` check an output location before the work that fills it
starts, so a typo in an output path fails in a second, not after an hour of compute.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    # mkstemp creates the file private (0600); give it the permissions open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_name, 0o666 & ~umask)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def output_dir(path: str | os.PathLike, what: str, create: bool = True) -> Path:
    """Check that folder `path` can hold output and create it (with its parents) unless
    `create` is false; else raise ValueError naming `what` (the option or config key), the
    path and the reason."""
    path = Path(path)
    existing = next(p for p in (path, *path.parents) if p.exists() or p == p.parent)
    if existing == path and not path.is_dir():
        raise ValueError(f"{what}: {path} exists and is not a folder")
    if not existing.is_dir():
        raise ValueError(f"{what}: cannot create {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{what}: {path} is not writable" if existing == path else
                         f"{what}: cannot create {path}: {existing} is not writable")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"{what}: cannot create {path} ({e.strerror or e})") from None
    return path


def output_file(path: str | os.PathLike, what: str, create: bool = True) -> Path:
    """Check that file `path` can be written (its folder created unless `create` is
    false), or raise ValueError naming `what`, the path and the reason."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what}: {path} is a folder; expected a file name")
    output_dir(path.parent, what, create)
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a parse error names the file, line and column."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder; expected a JSON file") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a text (UTF-8) file ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
