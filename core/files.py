"""Files beside the tables (FAISS shards): a local path or any URL fsspec can open.

A shard is written once by the task that builds it and read by every executor that
searches it. On a local or mounted path both sides use the file in place; on an object
store (``s3://``, ``gs://``, ``abfs://``, with the matching fsspec package installed) each
executor copies a shard once to its local disk (``local_copy``), since FAISS reads only
local files. ``file://`` URLs go through the same fsspec calls as an object store.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

# Where executors keep their copies of remote files (one per URL; a build's files never
# change, so a copy never goes stale; it goes when its source is removed: see
# ``remove_stale_copies``). Beside each copy, ``<copy>.source`` holds the URL it came from.
CACHE_DIR = os.path.join(tempfile.gettempdir(), "discovery-files")
SOURCE_SUFFIX = ".source"


def filesystem(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(the filesystem of ``path``, the path within it)."""
    return url_to_fs(path)


def is_url(path: str) -> bool:
    return "://" in path


def join(root: str, *parts: str) -> str:
    """``root`` / parts, for a local path or a URL (always ``/`` in a URL)."""
    return "/".join([root.rstrip("/"), *parts]) if is_url(root) else os.path.join(root, *parts)


def absolute(path: str) -> str:
    """A local path made absolute (executors may run elsewhere); a URL as it is."""
    return path if is_url(path) else os.path.abspath(path)


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` (parents created), so that a reader never sees part of it:
    written beside the target and moved into place (a rename on a local disk)."""
    fs, target = filesystem(path)
    parent = target.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    partial = f"{parent}/.{target.rsplit('/', 1)[-1]}.{uuid.uuid4().hex}.partial"
    with fs.open(partial, "wb") as fh:
        fh.write(data)
    fs.mv(partial, target)


def local_copy(path: str, cache_dir: str | None = None) -> str:
    """A local file with the contents of ``path``: the file itself when it is on a local
    filesystem, else a copy under ``cache_dir`` (default ``CACHE_DIR``) made on first use.

    Raises
    ------
    FileNotFoundError
        When there is nothing at ``path``.
    """
    fs, inner = filesystem(path)
    if isinstance(fs, LocalFileSystem):
        if not os.path.isfile(inner):
            raise FileNotFoundError(f"no file at {path}")
        return inner
    name = hashlib.sha1(path.encode()).hexdigest()[:16] + "-" + inner.rsplit("/", 1)[-1]
    cache_dir = cache_dir or CACHE_DIR
    local = os.path.join(cache_dir, name)
    if not os.path.isfile(local):
        if not fs.isfile(inner):
            raise FileNotFoundError(f"no file at {path}")
        os.makedirs(cache_dir, exist_ok=True)
        partial = f"{local}.{os.getpid()}.partial"
        fs.get_file(inner, partial)
        with open(f"{partial}{SOURCE_SUFFIX}", "w") as fh:
            fh.write(path)
        os.replace(f"{partial}{SOURCE_SUFFIX}", f"{local}{SOURCE_SUFFIX}")
        os.replace(partial, local)
    return local


def remove_stale_copies(cache_dir: str | None = None) -> list[str]:
    """Remove the local copies whose source no longer exists (``jobs.index`` removed its
    build); returns their sources. A copy's process keeps what it already read: FAISS
    reads a whole index into memory, and an open file outlives its name."""
    cache_dir = cache_dir or CACHE_DIR
    if not os.path.isdir(cache_dir):
        return []
    removed = []
    for name in sorted(os.listdir(cache_dir)):
        if not name.endswith(SOURCE_SUFFIX):
            continue
        marker = os.path.join(cache_dir, name)
        try:
            with open(marker) as fh:
                source = fh.read().strip()
            fs, inner = filesystem(source)
            if fs.exists(inner):
                continue
        except (OSError, ValueError):  # unreadable marker or store: leave the copy
            continue
        for stale in (marker[: -len(SOURCE_SUFFIX)], marker):
            try:
                os.remove(stale)
            except FileNotFoundError:
                pass  # another process on this machine removed it first
        removed.append(source)
    return removed


def folders(path: str) -> list[str]:
    """Names of the folders directly under ``path`` (none when it does not exist)."""
    fs, inner = filesystem(path)
    if not fs.exists(inner):
        return []
    return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(inner, detail=True)
                  if e["type"] == "directory")  # fmt: skip


def remove_tree(path: str) -> None:
    fs, inner = filesystem(path)
    fs.rm(inner, recursive=True)
