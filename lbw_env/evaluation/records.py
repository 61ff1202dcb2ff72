"""The record store: ``<out>/records.jsonl``, one JSON record per (scenario, arm, seed), appended crash-safely.

Why this shape: an evaluation runs for hours and may be killed at any moment, so every finished episode must be
on disk the moment it finishes, a rerun must pick up exactly where the last one stopped, and two evaluations
must never interleave their lines in one file. A record is one ``os.write`` of a whole line on an ``O_APPEND``
descriptor under an exclusive ``flock``, then fsync-ed; at worst a kill leaves a last line without its
newline, which is never counted and is cut away before the next append.

This module is the bottom of :mod:`lbw_env.evaluation`: the runner writes records here and the report reads
them from here, so neither has to import the other.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..cache import json_safe
from ..config import ConfigError, is_int, is_real

RECORDS_FILE = "records.jsonl"
VOLATILE_KEYS = ("timing", "host", "copy_of")
"""Record keys that differ between identical runs (wall-clock times, which process ran it, and which identical
run's record a copy was made from: :mod:`~lbw_env.evaluation.run`)."""

RecordKey = tuple[str, str, int]
"""``(scenario, arm label, seed)``: what identifies a record, in a store and across executors."""


def record_key(record: Mapping[str, Any]) -> RecordKey:
    return (str(record["scenario"]), str(record["arm"]), int(record["seed"]))


RESULT_FIELDS = ("test_ppl", "final_valid_ppl", "initial_test_ppl")
"""The numbers every report reads from a record."""
NONFINITE = ("inf", "-inf", "nan")
"""How records store non-finite numbers (strict JSON has none): a diverged run's perplexity is ``"inf"``."""


def check_record(record: Any) -> RecordKey:
    """The record's key, after checking what resuming and reporting rely on; a ValueError naming the field.

    A stored record counts as done and is never rerun: one without its results (or with a seed of 0.7, read as
    0) would otherwise sit in the report as a silent blank, or as another run's seed."""
    if not isinstance(record, Mapping):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    for name in ("scenario", "arm"):
        if not isinstance(record.get(name), str) or not record[name]:
            raise ValueError(f"{name}: expected a non-empty string, got {record.get(name)!r}")
    seed = record.get("seed")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
    for name in RESULT_FIELDS:
        value = record.get(name)
        if not is_real(value) and value not in NONFINITE:
            raise ValueError(f"{name}: expected a number, got {value!r}")
    if not isinstance(record.get("config_hash", ""), str):
        raise ValueError(f"config_hash: expected a string, got {record['config_hash']!r}")
    if not isinstance(record.get("curves", {}), Mapping):
        raise ValueError(f"curves: expected a mapping, got {record['curves']!r}")
    return record_key(record)


def strip_volatile(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record without the fields that differ between identical runs (times, host, and the working tree's git
    state, which an edit to any unrelated file flips to dirty), for comparisons."""
    out = {k: v for k, v in record.items() if k not in VOLATILE_KEYS}
    if isinstance(out.get("versions"), Mapping):
        out["versions"] = {k: v for k, v in out["versions"].items() if k != "git"}
    return out


def as_float(x: Any) -> float:
    """A record's number: floats, ints, and the strings ``"inf"``/``"nan"`` that encode non-finite values."""
    if x is None:
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def get_path(record: Mapping[str, Any], *path: str, default: Any = None) -> Any:
    """``record[path[0]][path[1]]...``, or ``default`` where a level is missing (older records lack fields)."""
    node: Any = record
    for p in path:
        if not isinstance(node, Mapping) or p not in node:
            return default
        node = node[p]
    return node


class RecordStore:
    """``<folder>/records.jsonl``: one JSON record per line, appended atomically, resumable.

    A record is written with one ``os.write`` of the whole line on an ``O_APPEND`` descriptor, then fsync-ed:
    a killed writer leaves either the whole line or (at worst, on a torn write) a last line without its
    newline. Such a partial line is never counted; opening the store for writing truncates it away and
    reports it in :attr:`dropped`. A record whose key is already stored is not written again.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / RECORDS_FILE
        self.records: list[dict[str, Any]] = []
        self._keys: set[RecordKey] = set()
        self.dropped: list[str] = []
        """Messages about what loading dropped (a partial last line, duplicate keys)."""
        self._fd: int | None = None
        self._valid_bytes = 0
        self.load()

    def load(self) -> list[dict[str, Any]]:
        """Read the complete records (a partial last line is left out, and noted in :attr:`dropped`)."""
        self.records, self._keys, self.dropped, self._valid_bytes = [], set(), [], 0
        if not self.path.is_file():
            return self.records
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1  # everything after the last newline is a torn write
        if end < len(data):
            self.dropped.append(
                f"{self.path}: ignored a partial last line ({len(data) - end} bytes, an interrupted write)"
            )
        for lineno, line in enumerate(data[:end].splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key = check_record(record)
            except (ValueError, KeyError, TypeError) as e:
                raise ConfigError(
                    f"{self.path}:{lineno}: not a valid record ({e}); move the file away or delete that line"
                ) from None
            if key in self._keys:
                self.dropped.append(f"{self.path}:{lineno}: duplicate record {key} ignored")
                continue
            self._keys.add(key)
            self.records.append(record)
        self._valid_bytes = end
        return self.records

    def done_keys(self) -> set[RecordKey]:
        """Keys ``(scenario, arm, seed)`` of the complete records."""
        return set(self._keys)

    def check_hashes(self, hashes: Mapping[RecordKey, str]) -> None:
        """Refuse to resume into records made by another configuration: a stored record whose key is in
        ``hashes`` must carry that ``config_hash``, or the mixed results would compare unlike runs."""
        stored = {record_key(r): r for r in self.records}
        for key, h in hashes.items():
            old = stored.get(key)
            if old is not None and old.get("config_hash") != h:
                raise ConfigError(
                    f"{self.path}: the record {key} was made with a different configuration (config_hash "
                    f"{old.get('config_hash')} != {h}); use another output folder or delete the old records"
                )

    def open(self) -> None:
        """Open for appending: take an exclusive lock, drop a torn last line."""
        if self._fd is not None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise ConfigError(f"{self.path}: another evaluation is writing to this folder") from None
            raise
        self._fd = fd
        self.load()  # again, under the lock: what is on disk now is what we append to
        if os.fstat(fd).st_size > self._valid_bytes:
            os.ftruncate(fd, self._valid_bytes)
            os.fsync(fd)
        _fsync_dir(self.folder)

    def append(self, record: Mapping[str, Any]) -> bool:
        """Write one record (False, and nothing written, if its key is already stored)."""
        key = record_key(record)
        if key in self._keys:
            return False
        if self._fd is None:
            self.open()
        assert self._fd is not None
        line = (json.dumps(json_safe(record), allow_nan=False, separators=(",", ":")) + "\n").encode()
        # One write of the whole line: O_APPEND puts it at the end in one piece. A short write (disk full)
        # is an error; the torn tail is dropped on the next open.
        written = os.write(self._fd, line)
        if written != len(line):
            raise OSError(errno.EIO, f"{self.path}: short write ({written} of {len(line)} bytes)")
        os.fsync(self._fd)
        self._keys.add(key)
        self.records.append(dict(record))
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock
            self._fd = None

    def __enter__(self) -> RecordStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fsync_dir(folder: Path) -> None:
    """Make the file's directory entry durable too (a new records.jsonl must survive a power cut)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
