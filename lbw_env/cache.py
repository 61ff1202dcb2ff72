"""The on-disk cache: one root, entries keyed by a hash of what produced them, every write atomic, every read verified.

A reader never sees a half-written file: each writer writes to a temporary file in the same folder and
``os.replace``-s it into place, which is atomic on POSIX. Two processes that race to build the same entry
both succeed and leave one complete copy.

Atomic writes do not protect an entry *after* it was written (a disk error, a tool that zero-fills or truncates
files, a hand edit), so every entry also carries the sha256 of its content, written LAST: a ``<file>.sha256``
sidecar for a file entry (tokenizer JSON, token array), a ``lbw_manifest.json`` inside a folder entry (base
checkpoint), listing each file's size and hash. An entry without its digest is unfinished (or from a cache older
than the digests) and is rebuilt like a corrupt one; a mismatch is logged in one line naming the file, and the
entry is rebuilt (:func:`verified_file`, :func:`cached_dir`). If it cannot be rebuilt, :class:`CacheError` names
the file. The run never uses data that differs from what was written.

Cost: hashing reads the entry once, at ~1-2 GB/s: milliseconds for the token arrays (a few MB; ~0.3 s for all of
WikiText-103) and the base checkpoints of the presets (a few MB), once per process and entry. For a 7B checkpoint
(~14 GB in bf16) a full hash would add ~10 s to a load that reads the same 14 GB anyway; for such entries set
``LBW_CACHE_VERIFY=size``, which keeps the digest written at build time but checks only that every file has its
recorded size (truncation and missing shards are still caught; a same-size corruption is not). We chose an
explicit opt-out over a lazy size+mtime shortcut because mtimes are coarse (a corruption within the same tick
keeps it) and are preserved by copies, so the shortcut would miss exactly what the hash is for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

ENV_CACHE = "LBW_CACHE"
ENV_VERIFY = "LBW_CACHE_VERIFY"
"""``hash`` (default): verify every cache entry's sha256 on load; ``size``: only the recorded sizes (huge entries)."""
DIGEST_SUFFIX = ".sha256"
"""A file entry's digest: ``<entry><DIGEST_SUFFIX>`` beside it, written after the entry."""
MANIFEST = "lbw_manifest.json"
"""A folder entry's digest: this file inside it (relative path -> size and sha256 of every other file)."""

log = logging.getLogger(__name__)


class CacheError(OSError):
    """A cache entry could not be written or rebuilt; the message names the file and what was expected."""


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def cache_root(configured: str = "") -> Path:
    """The cache root: ``configured`` if set, else ``$LBW_CACHE``, else ``~/.cache/lbw_env``."""
    root = configured or os.environ.get(ENV_CACHE, "") or str(Path.home() / ".cache" / "lbw_env")
    path = Path(root).expanduser().resolve()  # absolute: a later chdir must not move the cache
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CacheError(
            f"cache root {path}: cannot be created ({e.strerror or e}); expected a writable folder "
            f"(runtime.cache_dir or ${ENV_CACHE})"
        ) from e
    return path


def stable_hash(*parts: Any, length: int = 16) -> str:
    """A short hex digest of JSON-serialisable parts (dict keys sorted), stable across processes."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's content, read in 1 MiB chunks (constant memory for any size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_fingerprint(path: Path) -> dict[str, Any]:
    """Identity of an input file for cache keys: name, size and the sha256 of its content."""
    return {"name": path.name, "size": path.stat().st_size, "sha256": sha256_file(path)}


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target`` atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            # mkstemp creates 0600; a result or cache file gets the usual mode (0644 under the common umask).
            os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(target: Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_yaml(target: Path, data: Any, header: str = "") -> None:
    """Write ``data`` as YAML (keys in insertion order) to ``target`` atomically, after an optional comment header."""
    import yaml

    atomic_write_text(Path(target), header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def json_safe(value: Any) -> Any:
    """Plain JSON data: non-finite floats become ``"nan"``/``"inf"``/``"-inf"`` (as in StepRecord.to_dict)."""
    import numpy as np

    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, (float, np.floating)):
        x = float(value)
        return x if math.isfinite(x) else str(x)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_safe(dataclasses.asdict(value))
    return str(value)


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it is renamed to ``target``.

    If another process finished ``target`` first, ours is discarded and theirs kept.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------
# Verified entries: a digest written last, checked on every load
# ----------------------------------------------------------------------------------------------------------


def _hash_checks() -> bool:
    return os.environ.get(ENV_VERIFY, "hash").strip().lower() != "size"


def digest_path(entry: Path) -> Path:
    """Where the digest of file entry ``entry`` lives: ``<entry>.sha256`` beside it."""
    return entry.with_name(entry.name + DIGEST_SUFFIX)


def _file_record(path: Path) -> dict[str, Any]:
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def _mismatch(path: Path, record: Any, label: str) -> str | None:
    """Why ``path`` (called ``label`` in messages) differs from its ``{"size", "sha256"}`` record, or None."""
    if not isinstance(record, Mapping) or not {"size", "sha256"} <= set(record):
        return f"the digest of {label} is malformed"
    if not path.is_file():
        return f"{label} is missing"
    size = path.stat().st_size
    if size != record["size"]:
        return f"{label} has {size} bytes, {record['size']} were written"
    if _hash_checks() and sha256_file(path) != record["sha256"]:
        return f"{label} does not match the sha256 written with it (corrupted after it was written)"
    return None


def file_problem(entry: Path) -> str | None:
    """Why file entry ``entry`` cannot be used (missing, no digest, size or sha256 mismatch), or None."""
    if not entry.is_file():
        return "missing"
    digest = digest_path(entry)
    try:
        record = json.loads(digest.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {digest.name} (an unfinished write, or a cache from before entries were verified)"
    except (OSError, ValueError) as e:
        return f"{digest.name} is unreadable ({e})"
    return _mismatch(entry, record, entry.name)


def write_file_digest(entry: Path) -> None:
    """Write ``<entry>.sha256`` for a finished file entry; it goes last, so a digest vouches for complete data."""
    atomic_write_text(digest_path(entry), json.dumps(_file_record(entry)) + "\n")


def _discard(entry: Path) -> None:
    """Remove a bad entry (and its digest); a folder is first renamed away, so no reader sees it half-deleted."""
    if entry.is_dir():
        away = Path(tempfile.mkdtemp(prefix=f".{entry.name}.bad.", dir=entry.parent))
        os.replace(entry, away / entry.name)
        shutil.rmtree(away, ignore_errors=True)
    elif entry.exists():
        entry.unlink()
    digest_path(entry).unlink(missing_ok=True)


def verified_file(entry: Path, what: str) -> bool:
    """True if file entry ``entry`` exists and matches its digest. A bad entry (corrupt, truncated, without a
    digest) is logged in one line naming the file, removed, and False returned: the caller rebuilds it."""
    problem = file_problem(entry)
    if problem is None:
        return True
    if problem != "missing":
        log.warning("cache: %s %s: %s; rebuilding it", what, entry, problem)
        try:
            _discard(entry)
        except OSError as e:
            raise CacheError(f"cache: {what} {entry}: {problem}, and it cannot be removed ({e})") from e
    return False


def store_file(entry: Path, write: Callable[[Path], None], what: str) -> Path:
    """Write file entry ``entry`` atomically with ``write(tmp_path)``, then its digest. An OSError (read-only or
    full cache folder) becomes a :class:`CacheError` naming the entry."""
    try:
        with atomic_path(entry) as tmp:
            write(tmp)
        write_file_digest(entry)
    except CacheError:
        raise
    except OSError as e:
        raise CacheError(
            f"cache: cannot write {what} {entry} ({e}); expected a writable cache folder "
            f"(runtime.cache_dir or ${ENV_CACHE})"
        ) from e
    return entry


def write_manifest(folder: Path) -> None:
    """Write ``lbw_manifest.json`` into a finished folder entry: the size and sha256 of every other file."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {"files": {str(p.relative_to(folder)): _file_record(p) for p in files}}
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")


def folder_problem(folder: Path) -> str | None:
    """Why folder entry ``folder`` cannot be used (no manifest, a file missing or changed), or None."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
    except FileNotFoundError:
        return f"no {MANIFEST} (an unfinished build, or a cache from before entries were verified)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST} is unreadable ({type(e).__name__}: {e})"
    if not isinstance(files, Mapping) or not files:
        return f"{MANIFEST} lists no files"
    for name, record in files.items():
        problem = _mismatch(folder / name, record, name)
        if problem is not None:
            return problem
    return None


def cached_dir(target: Path, build: Callable[[Path], None], what: str = "entry") -> Path:
    """Return folder entry ``target``, verified against its manifest; build it first with ``build(tmp_folder)``
    if it is missing, unfinished or corrupt (a bad one is logged in one line naming the file, then replaced)."""
    if target.exists():
        problem = folder_problem(target) if target.is_dir() else "not a folder"
        if problem is None:
            return target
        log.warning("cache: %s %s: %s; rebuilding it", what, target, problem)
        try:
            _discard(target)
        except OSError as e:
            raise CacheError(f"cache: {what} {target}: {problem}, and it cannot be removed ({e})") from e
    try:
        with atomic_dir(target) as tmp:
            build(tmp)
            write_manifest(tmp)
    except CacheError:
        raise
    except OSError as e:
        raise CacheError(
            f"cache: cannot build {what} {target} ({e}); expected a writable cache folder "
            f"(runtime.cache_dir or ${ENV_CACHE})"
        ) from e
    return target
