"""Atomic, non-clobbering file and directory writes: every file the project writes goes
through here.

A file is written to a temporary file in the same directory (so the rename never crosses a
file system), flushed to disk, then renamed over its name: a reader, a crash or a full disk
sees either the old file or the whole new one, never a truncated mix. A directory (an
export, a packaged stage, a shard set) is built in a temporary sibling and swapped in by
renames. The temporary names start with '.' and end in '.tmp'; they are removed when a write
fails.

`overwrite=False` refuses (UserError naming `--overwrite`) to replace an existing path, and
is race-free for files (the final name is created with a hard link, which fails when the
name exists). Paths with a scheme ('gs://...') go through `etils.epath`, whose object
stores replace objects whole.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
from typing import IO, Any, Iterator

from unclip_jax.errors import UserError

TMP_SUFFIX = ".tmp"


def _remote(path: str) -> bool:
    return "://" in str(path)


def check_output_path(path: str, *, overwrite: bool = False, what: str = "--out",
                      is_dir: bool = False) -> str:
    """Check, before any work, that `path` can be written: not an existing directory (for a
    file), no parent that is a file, not an existing path unless `overwrite`. Returns the
    absolute path; raises UserError naming the fix."""
    path = str(path)
    if _remote(path):
        return path
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    probe = parent
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if probe and not os.path.isdir(probe):
        raise UserError(f"{what} {path}: {probe} is a file, not a directory; choose another "
                        "path")
    if os.path.isdir(path) and not is_dir:
        raise UserError(f"{what} {path} is a directory; name a file inside it, e.g. "
                        f"{os.path.join(path, 'out.png')}")
    if is_dir and os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{what} {path} is a file; name a directory")
    if os.path.lexists(path) and not overwrite:
        raise UserError(f"{what} {path} already exists; pass --overwrite to replace it or "
                        "choose another path")
    return path


def _tmp_name(path: str, directory: bool = False) -> str:
    parent, name = os.path.split(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    if directory:
        return tempfile.mkdtemp(prefix=f".{name}.", suffix=TMP_SUFFIX, dir=parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=TMP_SUFFIX, dir=parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())      # mkstemp makes 0600; a written file gets the usual mode
    return tmp


@functools.lru_cache(maxsize=None)
def _umask() -> int:
    """The process umask, read once: reading it means setting it, which must not happen
    while another thread (the web demo's) creates files."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_dir(path: str) -> str:
    """A new empty temporary directory beside `path` (same file system: it can be renamed
    to `path`); the caller removes it."""
    return _tmp_name(path, directory=True)


def _commit_file(tmp: str, path: str, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)          # fails if `path` exists: never clobbers, even in a race
    except FileExistsError:
        raise UserError(f"{path} already exists; pass --overwrite to replace it or choose "
                        "another path") from None
    except OSError:                 # no hard links here (some network file systems)
        if os.path.lexists(path):
            raise UserError(f"{path} already exists; pass --overwrite to replace it or "
                            "choose another path") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


@contextlib.contextmanager
def open_atomic(path: str, mode: str = "w", *, overwrite: bool = True,
                **kwargs: Any) -> Iterator[IO]:
    """`with open_atomic(p, "w") as f:` — like `open`, but `p` appears only when the block
    finishes without error, whole and synced; on error nothing is left behind."""
    if mode not in ("w", "wb"):
        raise ValueError(f"open_atomic writes whole files; mode {mode!r} is not 'w' or 'wb'")
    path = str(path)
    if _remote(path):
        from etils import epath
        with epath.Path(path).open(mode, **kwargs) as f:
            yield f
        return
    if not overwrite and os.path.lexists(path):
        raise UserError(f"{path} already exists; pass --overwrite to replace it or choose "
                        "another path")
    try:
        tmp = _tmp_name(path)
    except OSError as e:
        raise _write_error(path, e) from e
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _commit_file(tmp, path, overwrite)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _write_error(path, e) from e
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_error(path: str, e: OSError) -> UserError:
    """A failed write (full disk, read-only or missing directory, permissions) as one line."""
    why = e.strerror or type(e).__name__
    return UserError(f"cannot write {path} ({why}); nothing was changed there")


def write_files(files: dict[str, bytes], *, overwrite: bool = True) -> None:
    """Write several files as one unit: every file goes to a temporary name first; only when
    all are complete are they renamed into place (so e.g. an image and its sidecar never
    describe different runs). On error no temporary file is left, and with
    `overwrite=False` no new file either."""
    tmps: dict[str, str] = {}
    done: list[str] = []
    try:
        for path, data in files.items():
            if not overwrite and os.path.lexists(path):
                raise UserError(f"{path} already exists; pass --overwrite to replace it or "
                                "choose another path")
            try:
                tmps[path] = tmp = _tmp_name(path)
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:
                raise _write_error(path, e) from e
        for path, tmp in tmps.items():
            try:
                _commit_file(tmp, path, overwrite)
            except OSError as e:
                raise _write_error(path, e) from e
            done.append(path)
    except BaseException:
        for tmp in tmps.values():
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if not overwrite:
            for path in done:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        raise


def write_bytes(path: str, data: bytes, *, overwrite: bool = True) -> str:
    with open_atomic(path, "wb", overwrite=overwrite) as f:
        f.write(data)
    return path


def write_text(path: str, text: str, *, overwrite: bool = True) -> str:
    with open_atomic(path, "w", overwrite=overwrite, encoding="utf-8") as f:
        f.write(text)
    return path


def write_json(path: str, data: Any, *, overwrite: bool = True, **dump_kwargs: Any) -> str:
    dump_kwargs.setdefault("indent", 2)
    return write_text(path, json.dumps(data, **dump_kwargs) + "\n", overwrite=overwrite)


@contextlib.contextmanager
def build_dir(path: str, *, overwrite: bool = True) -> Iterator[str]:
    """`with build_dir(out) as tmp:` — write the directory's contents into `tmp`; when the
    block succeeds `tmp` replaces `out` (an existing `out` is removed only after the new one
    is complete); on error `tmp` is removed and `out` is as it was."""
    path = os.path.abspath(str(path))
    if not overwrite and os.path.lexists(path):
        raise UserError(f"{path} already exists; pass --overwrite to replace it or choose "
                        "another path")
    tmp = _tmp_name(path, directory=True)
    try:
        yield tmp
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(src: str, dst: str) -> None:
    """Move the complete directory `src` to `dst`, replacing what is there: the old `dst` is
    renamed aside first and removed only after `src` is in place (same file system)."""
    old = None
    if os.path.lexists(dst):
        old = _tmp_name(dst + ".old", directory=True)
        os.rmdir(old)
        os.replace(dst, old)
    try:
        os.replace(src, dst)
    except BaseException:
        if old is not None:
            os.replace(old, dst)
        raise
    if old is not None:
        if os.path.isdir(old) and not os.path.islink(old):
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.unlink(old)


def leftovers(directory: str) -> list[str]:
    """Temporary names this module may leave after a hard crash (for cleanup and tests)."""
    if not os.path.isdir(directory):
        return []
    return sorted(n for n in os.listdir(directory)
                  if n.startswith(".") and n.endswith(TMP_SUFFIX))
