"""The on-disk cache: one root, entries keyed by a hash of what produced them, every write atomic.

A reader never sees a half-written file: each writer writes to a temporary file in the same folder and
``os.replace``-s it into place, which is atomic on POSIX. Two processes that race to build the same entry
both succeed and leave one complete copy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

ENV_CACHE = "LBW_CACHE"


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def cache_root(configured: str = "") -> Path:
    """The cache root: ``configured`` if set, else ``$LBW_CACHE``, else ``~/.cache/lbw_env``."""
    root = configured or os.environ.get(ENV_CACHE, "") or str(Path.home() / ".cache" / "lbw_env")
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def stable_hash(*parts: Any, length: int = 16) -> str:
    """A short hex digest of JSON-serialisable parts (dict keys sorted), stable across processes."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def file_fingerprint(path: Path) -> dict[str, Any]:
    """Identity of an input file for cache keys: name, size and the sha256 of its content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"name": path.name, "size": path.stat().st_size, "sha256": h.hexdigest()}


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


def cached_dir(target: Path, build: Callable[[Path], None]) -> Path:
    """Return ``target``, building it first with ``build(tmp_folder)`` if it does not exist yet."""
    if not target.exists():
        with atomic_dir(target) as tmp:
            build(tmp)
    return target
