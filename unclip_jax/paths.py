"""One path layer for every directory the project reads or writes: local paths and `gs://`.

Workdirs, exports, TFDS `data_dir`s and embedding directories are either local paths or
Cloud Storage URLs (`gs://bucket/path`). Everything here goes through `etils.epath`, the
layer Orbax and TFDS already use (with TensorFlow installed it is TensorFlow's file system,
which also serves `tf.data` and TensorBoard writers), so one URL works for all of them.

The rule for a path option (`--workdir`, `--export`, `--out`, `config.data.data_dir`,
`config.data.embeddings_dir`, ...), applied by `resolve`:
  * `gs://bucket/path` is kept as written (trailing `/` dropped);
  * anything else is local: `~` and `$VARS` are expanded and a relative path is made
    absolute against the current directory of the process that reads the option.
Other URL schemes, and `gs:/x` (one slash: a `gs://` URL mangled by a path join), are
UserErrors.

Cloud Storage has no directories or atomic renames: `makedirs` is a no-op there, and a
writer that needs all-or-nothing (exports) builds locally and uploads (`upload_tree`).
A reader that needs local files for as long as the process runs (a model directory being
sampled: its tokenizer, its checkpoint identities) reads a `mirror` of the URL instead.
"""
from __future__ import annotations

import builtins
import contextlib
import hashlib
import io
import os
import posixpath
import re
import shutil
import tempfile
from typing import IO, Iterator

from unclip_jax.errors import UserError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):/")
SUPPORTED_SCHEMES = ("gs",)
# the model embedded in the package (`unclip-jax sample` without --checkpoint; 'bundled')
BUNDLED_MODEL = os.path.join(os.path.dirname(__file__), "assets", "shapes")


def is_remote(path) -> bool:
    """True for a URL (`gs://...`), False for a local path."""
    return bool(_SCHEME.match(os.fspath(path)))


def resolve(path, what: str = "path") -> str:
    """The canonical form of a path option (see the module docstring); raises UserError for
    an empty value or an unsupported URL, naming `what` (e.g. '--workdir')."""
    text = os.fspath(path).strip() if path is not None else ""
    if not text:
        raise UserError(f"{what} is empty; give a local path or a gs://bucket/path URL")
    m = _SCHEME.match(text)
    if m:
        scheme = m.group(1).lower()
        if len(scheme) == 1:            # a Windows drive letter would land here; not a URL
            return os.path.abspath(text)
        if scheme not in SUPPORTED_SCHEMES:
            raise UserError(f"{what} {text}: {scheme}:// is not supported; use a local path "
                            "or a gs://bucket/path URL")
        if not text.startswith(f"{scheme}://"):
            raise UserError(f"{what} {text} is not a URL (one slash after '{scheme}:'); "
                            f"write {scheme}://{text[len(scheme) + 1:].lstrip('/')}")
        rest = text[len(scheme) + 3:].rstrip("/")
        bucket = rest.split("/", 1)[0]
        if not bucket:
            raise UserError(f"{what} {text} names no bucket; write gs://BUCKET/path")
        return f"gs://{rest}"
    return os.path.abspath(os.path.expandvars(os.path.expanduser(text)))


def resolve_optional(path, what: str = "path") -> str:
    """`resolve`, but an empty value (an unset option) stays ''."""
    if path is None or not os.fspath(path).strip():
        return ""
    return resolve(path, what)


def epath(path):
    """`etils.epath.Path` for a resolved path."""
    from etils import epath as _epath
    return _epath.Path(os.fspath(path))


def join(base, *parts: str) -> str:
    """Join path components (URLs with '/', local paths with the OS separator)."""
    base = os.fspath(base)
    if is_remote(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def basename(path) -> str:
    return posixpath.basename(os.fspath(path).rstrip("/")) if is_remote(path) \
        else os.path.basename(os.fspath(path))


def dirname(path) -> str:
    return posixpath.dirname(os.fspath(path).rstrip("/")) if is_remote(path) \
        else os.path.dirname(os.fspath(path))


def exists(path) -> bool:
    return os.path.exists(path) if not is_remote(path) else epath(path).exists()


def isdir(path) -> bool:
    return os.path.isdir(path) if not is_remote(path) else epath(path).is_dir()


def isfile(path) -> bool:
    if not is_remote(path):
        return os.path.isfile(path)
    p = epath(path)
    return p.exists() and not p.is_dir()


def listdir(path) -> list[str]:
    """Names (not paths) in a directory; [] when it does not exist."""
    if not is_remote(path):
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
    p = epath(path)
    if not p.is_dir():
        return []
    return sorted(child.name for child in p.iterdir())


def makedirs(path) -> None:
    """Create a directory and its parents (Cloud Storage needs none: a no-op there)."""
    if is_remote(path):
        return
    os.makedirs(path, exist_ok=True)


def rmtree(path) -> None:
    """Remove a directory tree (or file); missing is fine."""
    if not is_remote(path):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.unlink(path)
        return
    p = epath(path)
    if p.is_dir():
        p.rmtree()
    elif p.exists():
        p.unlink()


def open(path, mode: str = "r", **kwargs) -> IO:  # noqa: A001  (mirrors builtins.open)
    """`open` for local paths and URLs (modes r, w, a with optional b)."""
    if not is_remote(path):
        if any(c in mode for c in "wa"):
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return builtins.open(path, mode, **kwargs)
    encoding, errors = kwargs.pop("encoding", None), kwargs.pop("errors", None)
    if errors and "b" not in mode and "r" in mode:     # epath reads strict UTF-8 only
        return io.StringIO(read_bytes(path).decode(encoding or "utf-8", errors))
    if encoding and encoding.lower().replace("-", "") != "utf8":
        raise UserError(f"{path}: only UTF-8 text is supported on {path.split(':')[0]}://")
    return _RemoteFile(epath(path).open(mode, **kwargs))


class _RemoteFile:
    """A file object from epath's `open` context manager (TensorFlow's GFile), closable
    without a `with` block (e.g. a log kept open for a whole run)."""

    def __init__(self, manager):
        self._manager = manager
        self._file = manager.__enter__()
        self.closed = False

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __iter__(self):
        return iter(self._file)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self.closed:
            self.closed = True
            return self._manager.__exit__(*exc)
        return False

    def close(self):
        self.__exit__(None, None, None)


def read_bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_text(path, encoding: str = "utf-8") -> str:
    with open(path, "r", encoding=encoding) as f:
        return f.read()


def write_bytes(path, data: bytes) -> None:
    """Write a whole file: atomically for local paths (`unclip_jax.atomic`), as one object
    upload (which replaces the object whole) on Cloud Storage."""
    if is_remote(path):
        with open(path, "wb") as f:
            f.write(data)
        return
    from unclip_jax import atomic
    atomic.write_bytes(os.fspath(path), data)


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def copy_file(src, dst) -> None:
    """Copy one file between any two locations (local ↔ gs://)."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 22)


def walk_files(root) -> Iterator[str]:
    """Paths, relative to `root` and '/'-separated, of every file below `root`."""
    root = os.fspath(root)
    if not is_remote(root):
        for d, _, files in os.walk(root):
            for f in files:
                yield os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
        return
    base = epath(root)
    for d, _, files in base.walk():
        for f in files:
            yield (d / f).relative_to(base).as_posix()


def copy_tree(src, dst, *, last: tuple[str, ...] = ()) -> None:
    """Copy every file below `src` to the same relative path below `dst` (either may be
    gs://). Files named in `last` (relative paths) are copied after all others, so a reader
    that checks for them never sees a partial tree."""
    files = sorted(walk_files(src))
    ordered = [f for f in files if f not in last] + [f for f in last if f in files]
    for rel in ordered:
        copy_file(join(src, *rel.split("/")), join(dst, *rel.split("/")))


@contextlib.contextmanager
def local_copy(path) -> Iterator[str]:
    """`with local_copy(p) as d:` — a local directory holding what `p` holds: `p` itself
    when local, else a temporary download of it (removed afterwards)."""
    if not is_remote(path):
        yield os.fspath(path)
        return
    tmp = tempfile.mkdtemp(prefix="unclip-download-")
    try:
        copy_tree(path, tmp)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_PART = ".part"                                   # `mirror`'s in-progress downloads:
_PART_FILE = re.compile(re.escape(_PART) + r"\d+$")  # FILE.partPID, renamed when complete


def download_directory() -> str:
    """Where `mirror` keeps its copies: `$UNCLIP_JAX_DOWNLOAD_DIR`, else
    `$XDG_CACHE_HOME/unclip-jax/downloads`, else `~/.cache/unclip-jax/downloads`."""
    env = os.environ.get("UNCLIP_JAX_DOWNLOAD_DIR")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "unclip-jax", "downloads")


def mirror(path) -> str:
    """A local directory holding what the directory `path` holds: `path` itself when local;
    for a gs:// URL a kept copy under `download_directory()` (one per URL), brought up to
    date on every call: a file is downloaded when the local copy is missing or differs in size
    or modification time (the local copy takes the remote file's), local files the remote
    no longer has are removed. Files are written under a temporary name and renamed, so a
    reader never sees half a file. UserError when the URL is not a directory."""
    if not is_remote(path):
        return os.fspath(path)
    url = resolve(path, "directory")
    if not isdir(url):
        raise UserError(f"{url} does not exist (or is not a directory)")
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    local = os.path.join(download_directory(), key, basename(url) or "root")
    base = epath(url)
    wanted = set()
    for rel in walk_files(url):
        wanted.add(rel)
        remote = (base / rel).stat()
        mtime = int(remote.mtime)
        dst = os.path.join(local, *rel.split("/"))
        if os.path.isfile(dst):
            st = os.stat(dst)
            if st.st_size == remote.length and int(st.st_mtime) == mtime:
                continue
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        part = f"{dst}{_PART}{os.getpid()}"
        copy_file(join(url, *rel.split("/")), part)
        os.utime(part, (mtime, mtime))
        os.replace(part, dst)
    for rel in list(walk_files(local)) if os.path.isdir(local) else []:
        if rel not in wanted and not _PART_FILE.search(rel):
            os.remove(os.path.join(local, *rel.split("/")))
    os.makedirs(local, exist_ok=True)
    return local
