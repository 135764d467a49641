"""Writing files and directories so that they appear only when complete (the one home for it).

Everything the tools write goes through a temporary name in the destination's own directory and
``os.replace`` (``os.rename`` for a directory) once its contents are on disk, so an interruption,
a full disk or an error leaves either the old file or nothing, never half a file:

- :func:`atomic_write`: a file written through a file object;
- :func:`atomic_write_bytes`: the same for bytes in memory;
- :func:`atomic_copy`: a copy of another file;
- :func:`staging_dir`: a new directory built in a hidden temporary one, renamed at the end;
- :func:`replace_durably`: the last step of all of them (fsync, rename, fsync the directory), also
  for files kept under a temporary name on purpose between runs (a download's ``.part``).

OS errors (no space, no permission) become one-line errors of the caller's type naming the path.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator

from .errors import EngineError

COPY_BLOCK = 16 << 20


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # make a rename durable too (not every filesystem can)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def replace_durably(tmp: Path, path: Path, mode: int | None = 0o644) -> None:
    """Put the finished file `tmp` in place as `path`: fsync it, set `mode`, rename, fsync the dir."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _write_error(error_type: type[Exception], path: Path, e: OSError) -> Exception:
    return error_type(f"{path}: writing failed ({e.strerror or e}); check free space and "
                      "permissions, the old file (if any) is untouched")


@contextlib.contextmanager
def atomic_write(path: Path, error_type: type[Exception] = EngineError,
                 mode: int = 0o644) -> Iterator[IO[bytes]]:
    """Write to a temporary file beside `path`, then put it in place; remove it on any failure."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise error_type(f"{path}: cannot create a file there ({e.strerror}); "
                         "check that the directory exists and is writable") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _write_error(error_type, path, e) from None
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes, error_type: type[Exception] = EngineError,
                       mode: int = 0o644) -> None:
    """Write `data` to `path` through a temporary file in the same directory, then rename."""
    with atomic_write(path, error_type, mode) as f:
        f.write(data)


def atomic_copy(src: Path, path: Path, error_type: type[Exception] = EngineError) -> None:
    """Copy the file `src` to `path` (a temporary name beside it first); a failure leaves no copy."""
    try:
        source = open(src, "rb")
    except OSError as e:
        raise error_type(f"{src}: cannot read it ({e.strerror}); check the path") from None
    with source, atomic_write(path, error_type) as out:
        shutil.copyfileobj(source, out, COPY_BLOCK)


@contextlib.contextmanager
def staging_dir(dst: Path, error_type: type[Exception] = EngineError) -> Iterator[Path]:
    """Yield a temporary directory next to `dst`; rename it to `dst` on success, remove it on error."""
    if dst.exists():
        raise error_type(f"{dst}: already exists; choose a new output directory or remove it "
                         "first (nothing was written)")
    parent = dst.parent
    if not parent.is_dir():
        raise error_type(f"{parent}: no such directory; create it first (nothing was written)")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=parent))
    except OSError as e:
        raise error_type(f"{parent}: cannot create a directory there ({e.strerror}); check its "
                         "permissions (nothing was written)") from None
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        os.rename(tmp, dst)
        _fsync_dir(parent)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise error_type(f"{dst}: writing failed ({e.strerror or e}); check free space and "
                             "permissions (nothing was left half-written)") from None
        raise
