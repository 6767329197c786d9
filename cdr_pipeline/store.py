"""Where the data directory lives: a local folder, or a prefix in an object store.

Everything above this module names files by *keys* relative to the data directory
(``cdr/date=2024-01-01/part-0.parquet``) and asks a :class:`Store` to read, write, list, move
and delete them. One store serves both, through a pyarrow filesystem; a local folder
(:class:`LocalStore`) overrides only what "atomic" costs differently there:

* a local folder has an atomic ``rename``: a file is written under a hidden temporary name,
  flushed to disk, and renamed over its target;
* an object store (S3, Tencent COS, MinIO, GCS, anything fsspec reaches) has no rename, but
  every ``PUT`` is atomic: an object appears whole when its upload completes and never
  before. A "move" there is a server-side copy then a delete; the copy's target appears whole.

``CDR_DATA_DIR=s3://bucket/prefix`` uses pyarrow's own S3 client, which reads the usual AWS
variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL`` for COS/MinIO). Schemes pyarrow
does not know go through fsspec when the package for them is installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pyarrow.fs as pafs

# Query parameters of a pyarrow filesystem URI that carry credentials: never in CDR_DATA_DIR,
# which is shown in logs, metadata and the UI.
SECRET_PARAMS = frozenset({"access_key", "secret_key", "session_token", "credential_token"})
LOCAL_SCHEMES = frozenset({"", "file", "local"})
# URL schemes pyarrow has its own clients for; any other goes through fsspec.
PYARROW_SCHEMES = frozenset({"s3", "gs", "gcs", "hdfs", "viewfs"})


class StoreError(ValueError):
    """CDR_DATA_DIR cannot be used as written."""


def json_bytes(obj: Any) -> bytes:
    """How every JSON record of the data directory is written (manifests, the accounting,
    journals, leases): indented, keys sorted, so the same record gives the same bytes."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def check_key(key: str) -> str:
    """A key must stay inside the data directory (it may come from a journal on disk)."""
    norm = posixpath.normpath(key)
    if key.startswith("/") or norm == ".." or norm.startswith("../") or "\\" in key:
        raise StoreError(f"path {key!r} leaves the data directory")
    return norm


def is_tmp_of(entry: str, name: str) -> bool:
    """Whether ``entry`` is a temporary :func:`tmp_key` made for ``name``."""
    return entry.startswith(f".{name}.") and entry.endswith(".tmp")


def tmp_key(key: str) -> str:
    """A hidden sibling name for staging ``key``: dataset readers (DuckDB's ``*.parquet``
    globs, pyarrow and Spark datasets) skip names that start with a dot or end in ``.tmp``."""
    head, name = posixpath.split(key)
    return posixpath.join(head, f".{name}.{uuid.uuid4().hex}.tmp")


def redacted(location: str) -> str:
    """``location`` fit to show: any credentials in it replaced by ``***``."""
    parts = urlsplit(location)
    if not parts.scheme:
        return location
    netloc = parts.netloc
    if parts.username or parts.password:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = "&".join(
        f"{k}=***" if k.lower() in SECRET_PARAMS else f"{k}={v}"
        for k, values in parse_qs(parts.query, keep_blank_values=True).items()
        for v in values
    )
    return parts._replace(netloc=netloc, query=query).geturl()


def is_object_store_url(location: str) -> bool:
    return urlsplit(location).scheme.lower() not in LOCAL_SCHEMES and "://" in location


class Store:
    """The data directory through a pyarrow filesystem, made on first use (so that loading
    the project's definitions never waits on the network). As it is, an object-store prefix:
    every PUT is atomic, a move is a server-side copy then a delete."""

    local = False

    def __init__(self, location: str, url: str) -> None:
        self._location, self._url = location, url.rstrip("/")
        self._fs: tuple[pafs.FileSystem, str] | None = None
        self._lock = threading.Lock()
        # the data directory's shared zone (CDR_SHARED_DATA_DIR), published in the same
        # transaction as each day: a day's journal names moves in both
        self.shared: Store | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Store) and self.url == other.url

    def __hash__(self) -> int:
        return hash(self.url)

    @property
    def fs(self) -> pafs.FileSystem:
        return self._connect()[0]

    @property
    def base(self) -> str:
        return self._connect()[1]

    def _connect(self) -> tuple[pafs.FileSystem, str]:
        with self._lock:
            if self._fs is None:
                self._fs = self._filesystem()
            return self._fs

    def _filesystem(self) -> tuple[pafs.FileSystem, str]:
        scheme = urlsplit(self._location).scheme.lower()
        if scheme in PYARROW_SCHEMES:
            fs, base = pafs.FileSystem.from_uri(self._location)
        else:
            from fsspec.core import url_to_fs

            fsspec_fs, base = url_to_fs(self._location)
            fs = pafs.PyFileSystem(pafs.FSSpecHandler(fsspec_fs))
        return fs, base.rstrip("/")

    @property
    def url(self) -> str:
        return self._url

    def uri(self, key: str = "") -> str:
        """Where ``key`` is, as a user would type it (messages, metadata)."""
        return f"{self._url}/{check_key(key)}" if key else self._url

    def _p(self, key: str) -> str:
        return f"{self.base}/{check_key(key)}"

    def read_bytes(self, key: str) -> bytes:
        # One GET: a missing key raises FileNotFoundError (raw bodies are read a page at a
        # time, and every read of a day first looks for its journal).
        with self.fs.open_input_stream(self._p(key)) as stream:
            return stream.read()

    def exists(self, key: str) -> bool:
        return self.fs.get_file_info(self._p(key)).type == pafs.FileType.File

    def list(self, folder: str) -> list[str]:
        """Names of the files directly in ``folder`` ([] when there is none)."""
        return self._entries(folder, pafs.FileType.File)

    def folders(self, folder: str) -> list[str]:
        """Names of the folders directly in ``folder`` ([] when there is none)."""
        return self._entries(folder, pafs.FileType.Directory)

    def _entries(self, folder: str, kind: pafs.FileType) -> list[str]:
        selector = pafs.FileSelector(self._p(folder), allow_not_found=True)
        return sorted(
            posixpath.basename(info.path)
            for info in self.fs.get_file_info(selector)
            if info.type == kind
        )

    def remove_folder(self, folder: str) -> None:
        """Remove ``folder`` once empty (object stores have no empty folders: a no-op)."""

    def write(self, key: str, fill: Callable[[Any], object]) -> None:
        """Create or overwrite ``key`` with what ``fill`` writes to the sink it is given (a
        path or an Arrow output stream, both accepted by pyarrow's writers), durably."""
        # The object appears when the stream is closed after ``fill`` returned; if ``fill``
        # fails, the upload is still closed (Arrow has no abort), so callers write under a
        # hidden temporary key and delete it on failure.
        with self.fs.open_output_stream(self._p(key)) as sink:
            fill(sink)

    def put(self, key: str, data: bytes) -> None:
        """Replace ``key`` with ``data`` so that a reader sees the old or the new content
        (one PUT is atomic on an object store: no temporary needed)."""
        with self.fs.open_output_stream(self._p(key)) as sink:
            sink.write(data)

    # pyarrow's object-store clients have no conditional PUT (If-None-Match): a create is
    # claimed, then confirmed by reading it back after a pause. Two claims a pause apart
    # cannot both be confirmed; a closer race is caught where it matters, by the owner check
    # before a day is published (cdr_day takes the lease again: a lost race fails there).
    SETTLE_S = 1.0

    def create(self, key: str, data: bytes) -> bool:
        """Write ``key`` only if it does not exist (False: it did)."""
        if self.exists(key):
            return False
        self.put(key, data)
        time.sleep(self.SETTLE_S)
        try:
            return self.read_bytes(key) == data
        except FileNotFoundError:
            return False

    def move(self, src: str, dst: str) -> None:
        self.fs.copy_file(self._p(src), self._p(dst))
        self.delete(src)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self._p(key))

    def open_input(self, key: str) -> Any:
        """A random-access file for pyarrow.parquet (the caller closes it)."""
        return self.fs.open_input_file(self._p(key))

    def local_dir(self, key: str) -> Path | None:
        """A local folder for scratch files of ``key`` (None: use the system's temp dir)."""
        return None


class LocalStore(Store):
    """A local folder: written under a hidden temporary name, flushed to disk and renamed
    over its target; an exclusive create is a hard link, which fails if the name is taken."""

    local = True

    def __init__(self, root: Path) -> None:
        super().__init__(str(root), str(root))
        self.root = root

    def _filesystem(self) -> tuple[pafs.FileSystem, str]:
        return pafs.LocalFileSystem(), str(self.root)

    def uri(self, key: str = "") -> str:
        return str(self.root / check_key(key)) if key else str(self.root)

    def _p(self, key: str) -> str:
        return str(self.path(key))

    def path(self, key: str) -> Path:
        """Where ``key`` is, refused if a link lies on the way: the pipeline neither follows a
        link out of its data directory nor deletes through one."""
        path = self.root / check_key(key)
        step = self.root
        for part in path.relative_to(self.root).parts:
            step = step / part
            if step.is_symlink():
                raise StoreError(
                    f"{step} is a symbolic link; the pipeline does not read, write or delete "
                    "through links in its data directory: replace it with the folder or file"
                )
        return path

    def remove_folder(self, folder: str) -> None:
        with contextlib.suppress(FileNotFoundError, OSError):
            self.path(folder).rmdir()

    def write(self, key: str, fill: Callable[[Any], object]) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fill(str(path))
        with open(path, "rb+") as fh:
            os.fsync(fh.fileno())

    def put(self, key: str, data: bytes) -> None:
        tmp = tmp_key(key)
        try:
            self.write(tmp, lambda where: Path(where).write_bytes(data))
            self.move(tmp, key)
        except BaseException:
            self.delete(tmp)
            raise

    def create(self, key: str, data: bytes) -> bool:
        tmp = tmp_key(key)
        self.write(tmp, lambda where: Path(where).write_bytes(data))
        try:
            os.link(self.path(tmp), self.path(key))
        except FileExistsError:
            return False
        finally:
            self.delete(tmp)
        self._fsync_dir(self.path(key).parent)
        return True

    def move(self, src: str, dst: str) -> None:
        os.replace(self.path(src), self.path(dst))
        self._fsync_dir(self.path(dst).parent)

    def local_dir(self, key: str) -> Path | None:
        path = self.path(key)
        path.mkdir(parents=True, exist_ok=True)
        return path

    @staticmethod
    def _fsync_dir(path: Path) -> None:
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def open_store(location: str | Path) -> Store:
    """The store ``CDR_DATA_DIR`` names: a local path, ``file://``, or an object-store URL.

    Only the URL is checked here; the object store is first contacted when it is used."""
    if isinstance(location, Path) or not is_object_store_url(location):
        text = str(location)
        if text.startswith(("file://", "local://")):
            text = urlsplit(text).path
        return LocalStore(Path(text).expanduser().resolve())
    parts = urlsplit(location)
    params = {k.lower() for k in parse_qs(parts.query)}
    if parts.username or parts.password or SECRET_PARAMS & params:
        raise StoreError(
            "credentials do not belong in the data URL (it is shown in logs and the UI): "
            "use AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    if not parts.netloc:
        raise StoreError(f"{location!r} names no bucket")
    scheme = parts.scheme.lower()
    if scheme not in PYARROW_SCHEMES:
        _check_fsspec(scheme)
    return Store(location, f"{parts.scheme}://{parts.netloc}{parts.path}")


def _check_fsspec(scheme: str) -> None:
    """A scheme pyarrow has no client for goes through fsspec (e.g. ``memory://``,
    ``abfs://`` with adlfs): refuse it now if fsspec cannot serve it."""
    try:
        import fsspec
    except ImportError:
        raise StoreError(
            f"pyarrow has no client for {scheme}:// URLs and fsspec is not installed "
            f"(pyarrow serves {', '.join(sorted(PYARROW_SCHEMES))})"
        ) from None
    try:
        fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError) as exc:
        raise StoreError(f"no filesystem for {scheme}:// URLs: {exc}") from None
