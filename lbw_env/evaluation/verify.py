"""Replay-verified records: ``evaluate.py --verify <records.jsonl>`` checks every number without the governor.

Why: a committed table is only as trustworthy as the records behind it, and a reader should not have to trust
(or even run) the governor's code to check them. Besides its resolved env and trainer configs, a record carries
everything a replay needs (``replay``: the reset seed and options, the size of the env's scenario pool, and
every action the env received, see :class:`~.episode.ActionTrace`). A replay builds a fresh env from those
configs alone, feeds the recorded actions back through the very episode loop that made the record
(:func:`~.episode.run_episode`, with a :class:`ReplayGovernor` in the governor's seat) and compares the record it
produces with the stored one, field by field and bit for bit (JSON floats round-trip exactly). The actions are
the governor's whole influence on a run, so a record that replays is a record of what those actions do to real
training; one whose numbers were edited, or whose actions were, does not replay. (As CompilerGym validates the
entries of its leaderboard.)

Compared: every field of the stored record except who ran it and when (:data:`IDENTITY_KEYS`), i.e. final,
best and test perplexities and losses, steps, decisions, skips, rollbacks, divergence, interventions, return,
the curves, the configs, the run seed and the trace itself. ``--keys`` narrows that to named (dotted) fields.

The last bit agrees on one machine kind with one torch (the record's ``versions``: ``torch`` and ``cpu``);
across CPU kernels float32 sums drift (measured in tests/test_golden.py), and a verify there says so first.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import CacheError, json_safe, stable_hash
from ..config import ConfigError, from_dict, is_int, to_dict
from ..plant.config import TrainerConfig
from ..scenarios import Scenario
from .episode import ActionTrace, package_versions, run_episode
from .records import RECORDS_FILE, VOLATILE_KEYS, check_record, get_path, record_key

IDENTITY_KEYS = (
    "suite",
    "arm",
    "governor",
    "governor_class",
    "governor_hash",
    "config_hash",
    "versions",
    *VOLATILE_KEYS,
)
"""Fields that say who made a record, with what code and when, not what the run did: not compared."""
MAX_POOL = 100_000
"""Largest scenario pool a replay rebuilds (the shipped families hold a few dozen scenarios)."""
MAX_SHOWN = 4
"""Differing fields listed per record (the rest are counted)."""
_MISSING = object()


class ReplayExhausted(RuntimeError):
    """The env asked for more decisions than the record holds actions for."""


class ReplayGovernor:
    """Answers ``predict`` with a record's actions, in order: the governor's place, without its code."""

    def __init__(self, actions: Sequence[Any], governor_hash: str = "") -> None:
        self.actions = list(actions)
        self.governor_hash = governor_hash or "replay"
        self._next = 0

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[Any, Any]:
        if episode_start is not None and bool(np.asarray(episode_start).any()):
            self._next = 0
        if self._next >= len(self.actions):
            raise ReplayExhausted(f"the env asked for decision {self._next + 1}; the record holds {len(self.actions)}")
        action = self.actions[self._next]
        self._next += 1
        return action, state


# ----------------------------------------------------------------------------------------------------------
# Reading records
# ----------------------------------------------------------------------------------------------------------


def records_path(path: str | os.PathLike[str]) -> Path:
    """A records file, or a results folder holding ``records.jsonl``."""
    p = Path(path)
    return p / RECORDS_FILE if p.is_dir() else p


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every record of a records file (or folder), strictly: a line that is not a whole record is bad input
    (a ConfigError naming the line), since a verification must not skip what it cannot read."""
    file = records_path(path)
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"records {path}: cannot read {file} ({e.__class__.__name__}: {e})") from None
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            check_record(record)
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{file}:{lineno}: not a valid record ({e.__class__.__name__}: {e})") from None
        records.append(record)
    if not records:
        raise ConfigError(f"records {path}: {file} holds no records")
    return records


def _where(record: Mapping[str, Any]) -> str:
    scenario, arm, seed = record_key(record)
    return f"{scenario} {arm} seed {seed}"


def check_replayable(record: Mapping[str, Any], keys: Sequence[str]) -> None:
    """Refuse, as bad input, a record a replay cannot start from: no action trace (made before records kept
    one), configs that no longer load, or none of the ``keys`` asked for."""
    from ..plant.runtime import check_device  # torch: loaded only when replaying, not to read records

    where = f"record {_where(record)}"
    replay = record.get("replay")
    if not isinstance(replay, Mapping) or not {"actions", "reset_seed", "pool_size"} <= set(replay):
        raise ConfigError(f"{where}: no action trace ('replay'): it was made before records kept one; rerun it")
    for key in ("trainer", "env", "eval_every", "seed", "scenario", "family", "split"):
        if key not in record:
            raise ConfigError(f"{where}: no {key!r} field: not a record of evaluate.py")
    try:
        if not 1 <= int(replay["pool_size"]) <= MAX_POOL:
            raise ValueError(f"replay.pool_size: expected an int in [1, {MAX_POOL}], got {replay['pool_size']!r}")
        # What the replay itself reads: malformed here is bad input (exit 2), not a mismatch (exit 1).
        for name, value in (("replay.reset_seed", replay["reset_seed"]), ("eval_every", record["eval_every"])):
            if not is_int(value) or value < 0:
                raise ValueError(f"{name}: expected an int >= 0, got {value!r}")
        ActionTrace.decode(replay["actions"])
        check_device(replay_scenario(record).trainer.model.device)
        env_config(record)
    except (ValueError, TypeError) as e:  # ConfigError is a ValueError
        raise ConfigError(f"{where}: cannot be replayed: {' '.join(str(e).split())}") from None
    for key in keys:
        if get_path(record, *key.split("."), default=_MISSING) is _MISSING:
            raise ConfigError(f"--keys {key}: not a field of {where}")


# ----------------------------------------------------------------------------------------------------------
# Replaying
# ----------------------------------------------------------------------------------------------------------


def replay_scenario(record: Mapping[str, Any]) -> Scenario:
    """The record's scenario with the record's own trainer config (overrides applied, as it ran): the family
    file it came from may have changed since, or be unknown here."""
    trainer = from_dict(TrainerConfig, record["trainer"], "trainer")
    return Scenario(str(record["scenario"]), str(record["family"]), record["split"], "replay", trainer)


def env_config(record: Mapping[str, Any]) -> Any:
    """The record's :class:`~lbw_env.env.EnvConfig` (the record stores it without the scenario pool)."""
    from ..env import EnvConfig  # torch: loaded only when replaying, not to read records

    return from_dict(EnvConfig, {**record["env"], "scenarios": [str(record["scenario"])]}, "env")


class Replayer:
    """Fresh envs from records' configs, one per (env config, trainer config), a few kept for the next records
    (reuse does not change a trajectory: every executor reuses envs the same way)."""

    MAX_ENVS = 4

    def __init__(self) -> None:
        self._envs: collections.OrderedDict[str, Any] = collections.OrderedDict()

    def _env(self, record: Mapping[str, Any], scenario: Scenario) -> Any:
        from ..env import EnvConfig, LBWEnv

        key = stable_hash(record["env"], record["trainer"])
        env = self._envs.pop(key, None)
        if env is None:
            cfg = env_config(record)
            try:
                env = LBWEnv(cfg)
            except ConfigError:  # its family is not known here (a user family file): the pool is replaced below
                env = LBWEnv(from_dict(EnvConfig, {**record["env"]}, "env"))
            # The pool is what reset(options={"scenario": name}) looks in: the record's scenario, as it ran, as
            # many times as the recording env's pool held scenarios (reset draws an index into it first).
            env.pool = [scenario] * int(record["replay"]["pool_size"])
            while len(self._envs) >= self.MAX_ENVS:
                self._envs.popitem(last=False)[1].close()
        self._envs[key] = env
        return env

    def replay(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The record the stored actions produce now, as plain JSON data (floats round-tripped)."""
        scenario = replay_scenario(record)
        replay = record["replay"]
        governor = ReplayGovernor(ActionTrace.decode(replay["actions"]), str(record.get("governor_hash") or ""))
        threads = get_path(record, "host", "torch_threads")
        if scenario.trainer.runtime.threads == 0 and isinstance(threads, int) and threads > 0:
            # The run left torch's thread count alone, so it ran with its worker's: float sums depend on it.
            from ..plant import runtime

            runtime.configure(threads, mallopt=False)
        fresh = run_episode(
            self._env(record, scenario),
            governor,
            scenario,
            int(record["seed"]),
            int(record["eval_every"]),
            suite=str(record.get("suite", "")),
            arm=str(record["arm"]),
            governor_spec=str(record.get("governor", "")),
            reset_seed=int(replay["reset_seed"]),
        )
        return json.loads(json.dumps(json_safe(fresh), allow_nan=False))

    def close(self) -> None:
        while self._envs:
            self._envs.popitem()[1].close()


# ----------------------------------------------------------------------------------------------------------
# Comparing
# ----------------------------------------------------------------------------------------------------------


def differences(stored: Any, fresh: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """``(dotted path, stored, replayed)`` of every leaf that differs in value or JSON type (1 is not 1.0).
    Only what the stored record claims is compared: a field the replay adds is no claim of the record."""
    if isinstance(stored, Mapping) and isinstance(fresh, Mapping):
        for k, v in stored.items():
            yield from differences(v, fresh.get(k, _MISSING), f"{path}.{k}" if path else str(k))
    elif isinstance(stored, list) and isinstance(fresh, list) and len(stored) == len(fresh):
        for i, (a, b) in enumerate(zip(stored, fresh)):
            yield from differences(a, b, f"{path}[{i}]")
    elif type(stored) is not type(fresh) or stored != fresh:
        yield path, stored, fresh


def compared_fields(record: Mapping[str, Any], keys: Sequence[str] = ()) -> list[str]:
    """The fields a verification compares: ``keys`` (dotted paths), else all but :data:`IDENTITY_KEYS`."""
    return list(keys) if keys else [k for k in record if k not in IDENTITY_KEYS]


def compare(stored: Mapping[str, Any], fresh: Mapping[str, Any], keys: Sequence[str] = ()) -> list[str]:
    """Every difference, as ``path (recorded X, replayed Y)``; empty if the replay agrees bit for bit."""
    out = []
    for key in compared_fields(stored, keys):
        parts = key.split(".")
        a, b = get_path(stored, *parts, default=_MISSING), get_path(fresh, *parts, default=_MISSING)
        for path, x, y in differences(a, b, key):
            out.append(f"{path} (recorded {_brief(x)}, replayed {_brief(y)})")
    return out


def _brief(x: Any) -> str:
    if x is _MISSING:
        return "nothing"
    text = json.dumps(x, allow_nan=False) if not isinstance(x, str) else repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------------------


def version_notes(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Where the records were made with another torch or CPU kind than this replay: the last bit may differ."""
    here = package_versions()
    notes = []
    for key in ("torch", "cpu"):
        seen = sorted({str(get_path(r, "versions", key, default="unknown")) for r in records})
        other = [v for v in seen if v != here.get(key)]
        if other:
            notes.append(
                f"records made with {key} {', '.join(other)}, replayed with {here.get(key)}: float results agree "
                "to the last bit only on one machine kind with one torch, so mismatches here may be kernel drift"
            )
    return notes


def check_data(records: Sequence[Mapping[str, Any]]) -> None:
    """Load and check the data of every distinct trainer config before the first replay (bad input, not a
    mismatch, if a file is missing)."""
    from ..plant.data import check_data as check_corpus
    from ..plant.sources import DataError

    seen: set[str] = set()
    for r in records:
        trainer = replay_scenario(r).trainer
        key = stable_hash(to_dict(trainer.data), trainer.runtime.cache_dir)
        if key not in seen:
            try:
                check_corpus(trainer.data, trainer.runtime.cache_dir)
            except (DataError, CacheError) as e:
                raise ConfigError(f"record {_where(r)}: {' '.join(str(e).split())}") from None
            seen.add(key)


def verify(
    path: str | os.PathLike[str],
    keys: Sequence[str] = (),
    limit: int | None = None,
    echo: Callable[[str], None] = print,
    note: Callable[[str], None] = print,
) -> int:
    """Replay the records of ``path`` (the first ``limit``), print one line per record (``OK`` or ``MISMATCH``
    with the differing fields) and a total; the exit status: 0 all agree, 1 any mismatch. Bad input (an
    unreadable file, a record without a trace, an unknown key, missing data) raises :class:`ConfigError`
    before anything is replayed."""
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit: expected an int >= 1, got {limit}")
    records = read_records(path)[:limit]
    for r in records:
        check_replayable(r, keys)
    check_data(records)
    for n in version_notes(records):
        note(f"note: {n}")
    replayer, bad = Replayer(), 0
    try:
        for r in records:
            try:
                problems = compare(r, replayer.replay(r), keys)
            except (ValueError, RuntimeError) as e:  # a tampered action the env refuses; too few actions
                problems = [f"replay failed: {type(e).__name__}: {' '.join(str(e).split())}"]
            bad += bool(problems)
            more = f"; and {len(problems) - MAX_SHOWN} more" if len(problems) > MAX_SHOWN else ""
            echo(f"MISMATCH {_where(r)}: " + "; ".join(problems[:MAX_SHOWN]) + more if problems else f"OK {_where(r)}")
    finally:
        replayer.close()
    fields = ", ".join(keys) if keys else "every field but " + ", ".join(IDENTITY_KEYS)
    echo(f"verified {len(records)} records of {records_path(path)}: {len(records) - bad} OK, {bad} MISMATCH ({fields})")
    return 1 if bad else 0
