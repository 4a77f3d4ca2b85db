"""Where runs live: a local or shared path, or a URI (``s3://``, ``gs://``, ...) through pyarrow.

A run directory is ``STORAGE/NAME``. On a path, the driver writes its files (``experiment.yaml``,
``history.jsonl``, TensorBoard events, ``results.parquet``, ``best.json``) in place. On a URI it
writes them to a local staging copy and uploads what changed (:class:`Mirror`) every few seconds
and at the end; trials write their checkpoints straight to the URI (Ray does that). Readers
(:class:`~raytune_torch.results.TuneResult`, ``resume``, ``tensorboard``) download a URI run's
small files to a local cache first (:func:`local_copy`); checkpoints are fetched one at a time.

S3 endpoint and credentials come from the usual places: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` (S3-compatible servers such as MinIO), an instance
profile, or the URI's query (``s3://bucket/runs?endpoint_override=host:9000&scheme=http``).
Ray-free.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .exceptions import ConfigError, ResultsError

log = logging.getLogger("raytune_torch")

__all__ = ["is_uri", "absolute", "join", "filesystem", "Mirror", "local_copy", "fetch_dir", "cache_root"]

# Files of a run directory that readers need locally; checkpoints are fetched on demand.
_SKIP_DIRS = ("checkpoint_",)


def is_uri(location: str | os.PathLike) -> bool:
    """True for ``scheme://...`` (``file://`` included), False for a plain path."""
    return "://" in str(location)


def absolute(storage: str | os.PathLike) -> str:
    """A path made absolute (relative to the working directory); a URI as it is."""
    return str(storage) if is_uri(storage) else os.path.abspath(os.path.expanduser(str(storage)))


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for a path or a URI (a URI's query string stays at the end)."""
    if not is_uri(base):
        return os.path.join(base, *parts)
    split = urlsplit(base)
    path = "/".join([split.path.rstrip("/"), *[p.strip("/") for p in parts]])
    return urlunsplit((split.scheme, split.netloc, path, split.query, split.fragment))


def display(location: str) -> str:
    """A URI without its query (endpoints and options stay out of messages)."""
    if not is_uri(location):
        return location
    split = urlsplit(location)
    return urlunsplit((split.scheme, split.netloc, split.path, "", ""))


def filesystem(location: str) -> tuple[Any, str]:
    """``(pyarrow filesystem, path on it)`` for a path or a URI.

    Raises:
        ConfigError: the scheme is unknown to pyarrow or its filesystem cannot be built (for
            example ``gs://`` without pyarrow's GCS support).
    """
    import pyarrow.fs as pafs

    if not is_uri(location):
        return pafs.LocalFileSystem(), os.path.abspath(location)
    uri = _with_env_endpoint(location)
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"storage: cannot open {display(location)!r}: {exc}; use a path every node sees or a URI "
                          f"pyarrow knows (s3://bucket/dir, gs://bucket/dir, hdfs://...)") from None
    return fs, path.rstrip("/")


def _with_env_endpoint(uri: str) -> str:
    """``s3://`` with ``AWS_ENDPOINT_URL`` set: pass it as the URI's endpoint (pyarrow reads the
    variable itself only in newer versions; the query names it explicitly for every process)."""
    split = urlsplit(uri)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if split.scheme != "s3" or not endpoint or "endpoint_override" in split.query:
        return uri
    ep = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    extra = f"endpoint_override={ep.netloc}&scheme={ep.scheme or 'https'}"
    if "region=" not in split.query:
        extra += f"&region={os.environ.get('AWS_DEFAULT_REGION') or os.environ.get('AWS_REGION') or 'us-east-1'}"
    query = f"{split.query}&{extra}" if split.query else extra
    return urlunsplit((split.scheme, split.netloc, split.path, query, split.fragment))


def ray_storage(storage: str) -> str:
    """The storage string to give Ray (a URI with the environment's S3 endpoint made explicit)."""
    return _with_env_endpoint(storage) if is_uri(storage) else storage


def cache_root() -> str:
    return os.environ.get("RAYTUNE_TORCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "raytune_torch")


def staging_dir(run_uri: str) -> str:
    """The local working copy of a URI run (the same for every process on this machine)."""
    digest = hashlib.sha256(display(run_uri).encode()).hexdigest()[:16]
    return os.path.join(cache_root(), "runs", digest, display(run_uri).rstrip("/").rsplit("/", 1)[-1])


def exists(location: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _walk(fs: Any, root: str) -> list[Any]:
    import pyarrow.fs as pafs

    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=False))
    except (FileNotFoundError, OSError):
        return []
    out = []
    for info in infos:
        if info.type == pafs.FileType.Directory:
            if not info.base_name.startswith(_SKIP_DIRS):
                out.extend(_walk(fs, info.path))
        elif info.type == pafs.FileType.File:
            out.append(info)
    return out


def download(run_uri: str, target: str) -> str:
    """Copy a URI run's files, checkpoints left out, into ``target``; returns ``target``.

    Raises:
        ResultsError: nothing is stored at ``run_uri``.
    """
    fs, root = filesystem(run_uri)
    files = _walk(fs, root)
    if not files:
        raise ResultsError(f"run directory {display(run_uri)!r} does not exist or is empty; give STORAGE/NAME of a run")
    for info in files:
        rel = info.path[len(root):].lstrip("/")
        dest = os.path.join(target, rel)
        if os.path.isfile(dest) and os.path.getsize(dest) == info.size and info.mtime is not None and \
                os.path.getmtime(dest) >= info.mtime.timestamp():
            continue
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with fs.open_input_stream(info.path) as src, open(dest + ".part", "wb") as out:
            shutil.copyfileobj(src, out)
        os.replace(dest + ".part", dest)
    return target


def local_copy(run_dir: str) -> str:
    """A local directory with the run's files: the path itself, or a URI run downloaded to the cache."""
    if not is_uri(run_dir):
        return run_dir
    return download(run_dir, staging_dir(run_dir))


def fetch_dir(location: str) -> contextlib.AbstractContextManager[str]:
    """A local directory with the contents of ``location`` (a checkpoint): the path itself, or
    a temporary download of a URI (removed on exit)."""
    if not is_uri(location):
        return contextlib.nullcontext(location)
    return _fetched(location)


@contextlib.contextmanager
def _fetched(location: str) -> Iterator[str]:
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    with tempfile.TemporaryDirectory(prefix="raytune-torch-") as tmp:
        try:
            pafs.copy_files(path, tmp, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        except (FileNotFoundError, OSError) as exc:
            raise ResultsError(f"cannot read {display(location)!r}: {exc}") from None
        yield tmp


class Mirror:
    """Uploads a local run directory's changed files to its URI (throttled; checkpoints are
    Ray's, so ``checkpoint_*`` folders are left alone).

    During a run (:meth:`maybe_sync`) the uploads go on in a thread of their own, so that the
    driver's loop, and every trial waiting on it under a stopping scheduler, never waits for
    object storage; :meth:`sync` waits for that thread and uploads what is left."""

    def __init__(self, local_dir: str, run_uri: str, every_s: float = 5.0) -> None:
        self.local_dir, self.run_uri, self.every_s = local_dir, run_uri, every_s
        self.fs, self.root = filesystem(run_uri)
        self._sent: dict[str, tuple[int, float]] = {}
        self._last = 0.0
        self._pool: Any = None
        self._pending: Any = None

    def maybe_sync(self) -> None:
        """Start uploading the changed files in the background: at most every ``every_s``
        seconds, never two uploads at once. A failed upload is logged; the next one retries."""
        if time.monotonic() - self._last < self.every_s or (self._pending is not None and not self._pending.done()):
            return
        self._last = time.monotonic()
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="raytune-torch-mirror")
        self._pending = self._pool.submit(self._upload_quietly)

    def _upload_quietly(self) -> None:
        try:
            self._upload_all()
        except Exception as exc:  # the run goes on; the final sync() uploads again, and raises
            log.warning("raytune-torch: uploading the run's files to %s failed (%s: %s); retrying later",
                        display(self.run_uri), type(exc).__name__, exc)

    def sync(self, names: tuple[str, ...] | None = None) -> None:
        """Upload every changed file, or only ``names`` (paths relative to the run directory),
        after the background upload in flight, if any."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = self._pending = None
        self._last = time.monotonic()
        if names is not None:
            for name in names:
                self._upload(os.path.join(self.local_dir, name))
            return
        self._upload_all()

    def _upload_all(self) -> None:
        for folder, dirs, files in os.walk(self.local_dir):
            dirs[:] = [d for d in dirs if not d.startswith(_SKIP_DIRS)]
            for name in files:
                if not name.endswith((".part", ".tmp")):
                    self._upload(os.path.join(folder, name))

    def _upload(self, local: str) -> None:
        try:
            stat = os.stat(local)
        except FileNotFoundError:
            return
        key = (stat.st_size, stat.st_mtime)
        if self._sent.get(local) == key:
            return
        rel = os.path.relpath(local, self.local_dir).replace(os.sep, "/")
        with open(local, "rb") as src, self.fs.open_output_stream(f"{self.root}/{rel}") as out:
            shutil.copyfileobj(src, out)
        self._sent[local] = key
