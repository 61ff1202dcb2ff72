"""Evaluation: run governors over a suite of scenarios and seeds, one JSON record per run, resumably.

A *suite* (``configs/suites/<name>.yaml``) names scenarios, *arms* (a governor plus optional trainer overrides:
the clipping baselines are ``adamw`` with ``optim.clip_norm``) and a number of seeds. It expands into tasks
``scenario x arm x seed``; each task is one episode of :class:`~lbw_env.env.LBWEnv` driven by the arm's governor
exactly as SB3's ``evaluate_policy`` drives a policy, and ends as one record in ``<out>/records.jsonl``.

Everything that can be wrong with a suite (unknown keys, an unknown governor or scenario, a missing model file,
a bad trainer override) is found by :func:`prepare` before the first episode starts and before the output
folder is touched. The :class:`RecordStore` makes runs resumable: every record is one line written with a
single ``os.write`` on an ``O_APPEND`` descriptor and fsync-ed, so a killed run leaves at most one torn last
line, which the next run drops (and says so); finished tasks are never run, or written, twice.

Executors (all give the same records, timing fields aside, because an episode is deterministic given its
scenario, seed and governor):

* ``local`` — in this process, one task after another;
* ``process`` — a ``multiprocessing`` pool (forkserver, or spawn where there is none) of ``workers``
  processes, each with ``max(1, cores // workers)`` torch threads, reusing its envs across tasks;
* ``ray`` — one Ray actor per worker on a fresh local Ray instance (optional extra ``lbw-env[ray]``).

Only the parent process writes records, as results arrive.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import errno
import fcntl
import functools
import importlib
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .config import (
    ConfigError,
    check,
    config_dir,
    deep_merge,
    fix_yaml_floats,
    from_dict,
    parse_overrides,
    read_yaml,
    to_dict,
)
from .report import reference_of
from .scenarios import Scenario, get_scenario, load_family, resolve, with_overrides

RECORDS_FILE = "records.jsonl"
MAX_CURVE_POINTS = 100
"""Curves in a record are downsampled to at most this many points (records stay a few kB)."""
VOLATILE_KEYS = ("timing", "host")
"""Record keys that differ between identical runs (wall-clock times, which process ran it)."""
Executor = Literal["local", "process", "ray"]


# ----------------------------------------------------------------------------------------------------------
# Suite configuration
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Arm:
    """One column of the comparison: a governor, optionally on a modified trainer."""

    label: str = ""
    """Name of the arm in records and reports (empty: the governor spec). Must be unique in the suite."""
    governor: str = "adamw"
    """Governor spec for ``policies.make_governor``: ``adamw``, ``lbw_guard``, ``skip_step``, ``ppo:<path>`` ..."""
    trainer_overrides: list[str] = dataclasses.field(default_factory=list)
    """``key=value`` trainer overrides for this arm only, applied after ``env.trainer_overrides``. Clipping
    baselines are ``adamw`` with ``optim.clip_norm=1.0``: clipping is a trainer option, not a governor."""

    def validate(self) -> None:
        if not self.label:
            self.label = self.governor
        check(bool(self.governor), "governor", "a non-empty governor spec", self.governor)


@dataclasses.dataclass
class SuiteConfig:
    """A suite: scenarios x arms x seeds, and how to run and report them."""

    name: str = ""
    """Name of the suite (default output folder ``results/<name>/``). Empty: the file's stem."""
    description: str = ""
    """What the suite is for."""
    scenarios: list[str] = dataclasses.field(default_factory=lambda: ["tiny"])
    """Scenario specs for ``scenarios.resolve``: ``family/name``, ``family`` (all of it), ``family:train`` or
    ``family:heldout``. Family specs pick up whatever scenarios the family file has."""
    arms: list[Arm] = dataclasses.field(default_factory=lambda: [Arm("adamw", "adamw"), Arm("lbw_guard", "lbw_guard")])
    """Arms to compare. In YAML an arm may be a bare governor spec (``lbw_guard``: label = spec)."""
    seeds: int = 3
    """Seeds per (scenario, arm): ``reset(seed=s)`` for s in 0..seeds-1. Arms share seeds, so they are paired:
    same initialisation, same batches, same faults."""
    env: dict[str, Any] = dataclasses.field(default_factory=dict)
    """An :class:`~lbw_env.env.EnvConfig` mapping without ``scenarios`` (decision_interval, window, envelope,
    reward, trainer_overrides ...)."""
    eval_every: int = 0
    """Decisions between validation evaluations during an episode, for the curves and time-to-target
    (0: only at the start and the end, so time-to-target is as coarse as a whole run)."""
    reference: dict[str, str] = dataclasses.field(default_factory=dict)
    """Time-to-target references: ``{scenario or family: reference scenario}``. A scenario's target is the
    reference arm's mean final validation perplexity on its reference scenario (the sane-LR run of the same
    model). Lookup: the scenario's own entry, else its family's, else ``<family>/ref`` if that exists, else no
    time-to-target. The reference may be in another family (``runtime_faults: lr_stress/ref``) but must be in
    the suite to be run."""
    reference_arm: str = "adamw"
    """The arm that others are compared with (paired by scenario and seed), and that sets the target."""
    guard_arm: str = "lbw_guard"
    """The arm of the headline table (the paper's guard column)."""
    imports: list[str] = dataclasses.field(default_factory=list)
    """Python modules imported before governors are built, in every worker (e.g. to register a custom
    governor with ``policies.base.register``)."""

    def validate(self) -> None:
        check(self.seeds >= 1, "seeds", "an int >= 1", self.seeds)
        check(self.eval_every >= 0, "eval_every", "an int >= 0 (0: only at the end)", self.eval_every)
        check(bool(self.scenarios), "scenarios", "a non-empty list of scenario specs", self.scenarios)
        check(bool(self.arms), "arms", "a non-empty list of arms", self.arms)
        labels = [a.label for a in self.arms]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        check(not dup, "arms", f"unique labels (duplicated: {', '.join(dup)})", labels)
        check("scenarios" not in self.env, "env.scenarios", "nothing: scenarios are set at the top level", "a value")
        self.env_config([])  # raises ConfigError naming env.<key>

    def env_config(self, extra_overrides: Sequence[str] = ()) -> Any:
        """The :class:`~lbw_env.env.EnvConfig` of this suite, with an arm's trainer overrides appended."""
        from .env import EnvConfig

        data = dict(self.env)
        data["scenarios"] = list(self.scenarios)
        data["trainer_overrides"] = [*(data.get("trainer_overrides") or []), *extra_overrides]
        return from_dict(EnvConfig, fix_yaml_floats(data), "env")


def suites_dir() -> Path:
    return config_dir() / "suites"


def available_suites() -> list[str]:
    return sorted(p.stem for p in suites_dir().glob("*.yaml"))


def suite_path(spec: str | os.PathLike[str]) -> Path:
    """A suite file from a path, or a name under ``configs/suites/``."""
    p = Path(spec)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    named = suites_dir() / f"{spec}.yaml"
    if named.is_file():
        return named
    raise ConfigError(f"suite {str(spec)!r}: no such file or suite; expected a path or one of {available_suites()}")


def _normalise_arms(data: dict[str, Any]) -> dict[str, Any]:
    arms = data.get("arms")
    if isinstance(arms, list):
        data["arms"] = [{"label": a, "governor": a} if isinstance(a, str) else a for a in arms]
    return data


def load_suite(
    spec: str | os.PathLike[str] | Mapping[str, Any], overrides: Sequence[str] = (), governors: Sequence[str] = ()
) -> SuiteConfig:
    """A validated suite from a file (path or name) or mapping, ``key=value`` overrides, and optionally
    ``governors`` that replace its arms by plain governor arms (``--governors`` on the command line)."""
    if isinstance(spec, Mapping):
        where, data, stem = "suite", dict(spec), ""
    else:
        path = suite_path(spec)
        where, data, stem = str(path), read_yaml(path), path.stem
    try:
        merged = deep_merge(fix_yaml_floats(data), fix_yaml_floats(parse_overrides(overrides)))
        if governors:
            merged["arms"] = list(governors)
        suite = from_dict(SuiteConfig, _normalise_arms(merged))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    if not suite.name:
        suite.name = stem or "suite"
    return suite


# ----------------------------------------------------------------------------------------------------------
# Tasks and the plan: everything checked before anything runs
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Task:
    """One episode to run: a scenario, an arm, a seed."""

    scenario: str
    arm: Arm
    seed: int

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.scenario, self.arm.label, self.seed)


@dataclasses.dataclass
class Plan:
    """A suite after full validation: resolved scenarios, tasks in run order, and their config hashes."""

    suite: SuiteConfig
    scenarios: list[Scenario]
    tasks: list[Task]
    hashes: dict[tuple[str, str, int], str]
    reference: dict[str, str]
    """Scenario -> its time-to-target reference scenario (see :attr:`SuiteConfig.reference`)."""
    warnings: list[str]


def record_key(record: Mapping[str, Any]) -> tuple[str, str, int]:
    return (str(record["scenario"]), str(record["arm"]), int(record["seed"]))


def task_hash(env_cfg: Any, arm: Arm, trainer_cfg: Any, eval_every: int) -> str:
    """What decides a record's content: a record whose hash differs was made by another configuration."""
    from .cache import stable_hash

    env = {k: v for k, v in to_dict(env_cfg).items() if k not in ("scenarios", "trainer_overrides")}
    return stable_hash(env, arm.governor, to_dict(trainer_cfg), eval_every)


def import_modules(names: Iterable[str]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"imports: cannot import {name!r} ({e})") from e


def make_arm_governor(arm: Arm, envelope: Any) -> Any:
    """The arm's governor; any failure (unknown name, missing model file, bad argument) as a ConfigError
    naming the arm and the spec (which holds the path of a model file)."""
    from policies.base import make_governor

    try:
        return make_governor(arm.governor, envelope)
    except ConfigError as e:
        raise ConfigError(f"arm {arm.label!r}: {e}") from None
    except Exception as e:  # a factory may raise anything for a bad argument: report it, don't run
        raise ConfigError(f"arm {arm.label!r}: governor {arm.governor!r}: {type(e).__name__}: {e}") from e


def prepare(suite: SuiteConfig) -> Plan:
    """Resolve and check everything a run needs. Raises :class:`ConfigError` naming the faulty thing."""
    where = f"suite {suite.name!r}"
    try:
        import_modules(suite.imports)
        scenarios = list({s.name: s for s in resolve(suite.scenarios)}.values())  # deduplicated, in order
        base_env = suite.env_config()
        hashes: dict[tuple[str, str, int], str] = {}
        for arm in suite.arms:
            env_cfg = suite.env_config(arm.trainer_overrides)
            make_arm_governor(arm, env_cfg.envelope)
            for s in scenarios:
                try:
                    trainer = with_overrides(s, env_cfg.trainer_overrides).trainer
                except ConfigError as e:
                    raise ConfigError(
                        f"arm {arm.label!r}: trainer overrides {env_cfg.trainer_overrides}: {e}"
                    ) from None
                h = task_hash(base_env, arm, trainer, suite.eval_every)
                for seed in range(suite.seeds):
                    hashes[(s.name, arm.label, seed)] = h
        for key, name in suite.reference.items():
            try:
                if "/" in key:
                    get_scenario(key)
                else:
                    load_family(key)
                get_scenario(name)
            except ConfigError as e:
                raise ConfigError(f"reference.{key}: {e}") from None
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    warnings = []
    names = [s.name for s in scenarios]
    reference: dict[str, str] = {}
    for s in scenarios:
        ref = reference_of(s.name, suite.reference, names)
        if ref is None:
            continue
        reference[s.name] = ref
        if ref not in names:
            warnings.append(f"reference scenario {ref} of {s.name} is not in the suite: no time-to-target for it")
    labels = [a.label for a in suite.arms]
    if suite.reference_arm not in labels:
        warnings.append(
            f"reference arm {suite.reference_arm!r} is not among the arms {labels}: no paired differences or targets"
        )
    # Scenario-major, then seed, then arm: the paired runs of a seed finish together, so a partial suite is
    # already a set of complete comparisons.
    tasks = [Task(s.name, arm, seed) for s in scenarios for seed in range(suite.seeds) for arm in suite.arms]
    return Plan(suite, scenarios, tasks, hashes, reference, warnings)


# ----------------------------------------------------------------------------------------------------------
# One episode -> one record
# ----------------------------------------------------------------------------------------------------------


@functools.cache
def package_versions() -> dict[str, str]:
    """Versions of the packages that decide a record's numbers."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist, key in (
        ("torch", "torch"),
        ("transformers", "transformers"),
        ("gymnasium", "gymnasium"),
        ("stable-baselines3", "stable_baselines3"),
        ("lbw-env", "lbw_env"),
        ("numpy", "numpy"),
    ):
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = "not installed"
    return out


def json_safe(value: Any) -> Any:
    """Plain JSON data: non-finite floats become ``"nan"``/``"inf"``/``"-inf"`` (as in StepRecord.to_dict)."""
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


def _finite_mean(xs: Sequence[float]) -> float:
    finite = [x for x in xs if math.isfinite(x)]
    return float(np.mean(finite)) if finite else math.nan


def _downsample_intervals(intervals: list[list[Any]]) -> dict[str, list[Any]]:
    """Per-interval step records -> at most MAX_CURVE_POINTS bins of consecutive intervals.

    A bin's point: the step count at its end, the mean finite training loss and mean LR scale over its steps,
    and its skipped and non-finite step counts.
    """
    k = max(1, math.ceil(len(intervals) / MAX_CURVE_POINTS))
    out: dict[str, list[Any]] = {"step": [], "loss": [], "lr_scale": [], "skipped": [], "nonfinite": []}
    for i in range(0, len(intervals), k):
        records = [r for interval in intervals[i : i + k] for r in interval]
        if not records:
            continue
        out["step"].append(records[-1].step + 1)
        out["loss"].append(_finite_mean([r.loss for r in records]))
        out["lr_scale"].append(float(np.mean([r.lr_scale for r in records])))
        out["skipped"].append(sum(bool(r.skipped) for r in records))
        out["nonfinite"].append(sum(bool(r.nonfinite) for r in records))
    return out


def _thin(n: int) -> list[int]:
    """Indices keeping at most MAX_CURVE_POINTS of n points, evenly, always with the first and the last."""
    if n <= MAX_CURVE_POINTS:
        return list(range(n))
    return sorted({round(i * (n - 1) / (MAX_CURVE_POINTS - 1)) for i in range(MAX_CURVE_POINTS)})


def run_episode(
    env: Any,
    governor: Any,
    scenario: str | Scenario,
    seed: int,
    eval_every: int = 0,
    *,
    suite: str = "",
    arm: str = "",
    governor_spec: str = "",
) -> dict[str, Any]:
    """Run one episode of ``scenario`` with ``seed`` under ``governor``; return its record (plain JSON data).

    The loop is SB3's ``evaluate_policy`` for one env: ``state=None``, ``episode_start`` true on the first call
    only, ``deterministic=True``. Every ``eval_every`` decisions the validation perplexity is measured (outside
    the timed run; evaluation neither consumes batches nor draws random numbers, so it does not change the
    trajectory). Times: ``timing.wall_seconds`` is the episode after ``reset`` without those evaluations
    (training, governor, envelope), ``timing.valid_seconds`` the same clock at each validation point.
    """
    base = env.unwrapped
    name = scenario if isinstance(scenario, str) else scenario.name
    t_reset = time.perf_counter()
    obs, reset_info = env.reset(seed=seed, options={"scenario": name})
    reset_seconds = time.perf_counter() - t_reset
    sc: Scenario = base.scenario
    trainer = base.trainer

    t0 = time.perf_counter()
    eval_seconds = governor_seconds = train_seconds = 0.0
    state: Any = None
    episode_start = np.ones((1,), dtype=bool)
    intervals: list[list[Any]] = []
    valid_step: list[int] = [0]
    valid_ppl: list[float] = [math.nan]  # filled from info["final"]["initial_valid_loss"] at the end
    valid_time: list[float] = [0.0]
    valid_train_time: list[float] = [0.0]
    total_return, decisions = 0.0, 0
    while True:
        tg = time.perf_counter()
        action, state = governor.predict(obs, state=state, episode_start=episode_start, deterministic=True)
        governor_seconds += time.perf_counter() - tg
        episode_start = np.zeros((1,), dtype=bool)
        obs, reward, terminated, truncated, info = env.step(action)
        total_return += float(reward)
        decisions += 1
        intervals.append(list(info["records"]))
        train_seconds += sum(r.seconds for r in info["records"])
        if terminated or truncated:
            break
        if eval_every and decisions % eval_every == 0:
            te = time.perf_counter()
            result = trainer.evaluate("valid")
            elapsed = te - t0 - eval_seconds
            eval_seconds += time.perf_counter() - te
            valid_step.append(trainer.t)
            valid_ppl.append(result.ppl)
            valid_time.append(elapsed)
            valid_train_time.append(train_seconds)
    wall_seconds = time.perf_counter() - t0 - eval_seconds
    final = info["final"]
    valid_ppl[0] = _safe_exp(final["initial_valid_loss"])
    valid_step.append(int(final["steps"]))
    valid_ppl.append(float(final["valid_ppl"]))
    valid_time.append(wall_seconds)
    valid_train_time.append(train_seconds)
    keep = _thin(len(valid_step))
    te = time.perf_counter()
    test = trainer.evaluate("test")
    test_seconds = time.perf_counter() - te

    finite_valid = [p for p in valid_ppl if math.isfinite(p)]
    record = {
        "suite": suite,
        "scenario": sc.name,
        "family": sc.family,
        "split": sc.split,
        "arm": arm or governor_spec,
        "governor": governor_spec,
        "governor_class": type(governor).__name__,
        "seed": int(seed),
        "run_seed": int(reset_info.get("run_seed", -1)),
        "eval_every": int(eval_every),
        "trainer": to_dict(sc.trainer),
        "env": {k: v for k, v in to_dict(base.cfg).items() if k != "scenarios"},
        "versions": package_versions(),
        "final_valid_loss": float(final["valid_loss"]),
        "final_valid_ppl": float(final["valid_ppl"]),
        "initial_valid_ppl": valid_ppl[0],
        "best_valid_ppl": min(finite_valid) if finite_valid else math.inf,
        "test_loss": test.loss,
        "test_ppl": test.ppl,
        "steps": int(final["steps"]),
        "decisions": decisions,
        "skipped_steps": int(final["skipped_steps"]),
        "rollbacks": int(final["rollbacks"]),
        "diverged": bool(final["diverged"]),
        "interventions": dict(info.get("interventions", {})),
        "return": total_return,
        "curves": {
            "train": _downsample_intervals(intervals),
            "valid": {"step": [valid_step[i] for i in keep], "ppl": [valid_ppl[i] for i in keep]},
        },
        "timing": {
            "wall_seconds": wall_seconds,
            "train_seconds": train_seconds,
            "env_train_seconds": float(final["train_seconds"]),
            "governor_seconds": governor_seconds,
            "eval_seconds": eval_seconds,
            "test_seconds": test_seconds,
            "reset_seconds": reset_seconds,
            "valid_seconds": [valid_time[i] for i in keep],
            "valid_train_seconds": [valid_train_time[i] for i in keep],
        },
    }
    return json_safe(record)


def _safe_exp(x: float) -> float:
    return math.exp(x) if x < 700 else math.inf


# ----------------------------------------------------------------------------------------------------------
# The record store
# ----------------------------------------------------------------------------------------------------------


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
        self._keys: set[tuple[str, str, int]] = set()
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
                key = record_key(record)
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

    def done_keys(self) -> set[tuple[str, str, int]]:
        """Keys ``(scenario, arm, seed)`` of the complete records."""
        return set(self._keys)

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


def strip_volatile(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record without the fields that differ between identical runs (times, host), for comparisons."""
    return {k: v for k, v in record.items() if k not in VOLATILE_KEYS}


# ----------------------------------------------------------------------------------------------------------
# Running tasks: one runner per process, three executors
# ----------------------------------------------------------------------------------------------------------


class Runner:
    """Runs tasks of one suite in the current process, reusing envs (one per arm's trainer overrides, holding
    a trainer per scenario and the cached initial states) and governors across tasks."""

    MAX_ENVS = 4
    """Envs kept alive at once (each holds a model per scenario it has run)."""

    def __init__(self, suite: SuiteConfig, executor: str = "local") -> None:
        import_modules(suite.imports)
        self.suite = suite
        self.executor = executor
        self._envs: dict[tuple[str, ...], Any] = {}
        self._governors: dict[tuple[str, tuple[str, ...]], Any] = {}

    def _env(self, arm: Arm) -> Any:
        from .env import LBWEnv

        key = tuple(arm.trainer_overrides)
        env = self._envs.pop(key, None)
        if env is None:
            env = LBWEnv(self.suite.env_config(arm.trainer_overrides))
            while len(self._envs) >= self.MAX_ENVS:
                self._envs.pop(next(iter(self._envs))).close()
        self._envs[key] = env  # most recently used last
        return env

    def run(self, task: Task) -> dict[str, Any]:
        env = self._env(task.arm)
        gkey = (task.arm.governor, tuple(task.arm.trainer_overrides))
        if gkey not in self._governors:
            self._governors[gkey] = make_arm_governor(task.arm, env.unwrapped.cfg.envelope)
        record = run_episode(
            env,
            self._governors[gkey],
            task.scenario,
            task.seed,
            self.suite.eval_every,
            suite=self.suite.name,
            arm=task.arm.label,
            governor_spec=task.arm.governor,
        )
        record["config_hash"] = task_hash(self.suite.env_config(), task.arm, env.unwrapped.scenario.trainer,
                                          self.suite.eval_every)  # fmt: skip
        import torch

        record["host"] = {
            "executor": self.executor,
            "pid": os.getpid(),
            "hostname": platform.node(),
            "torch_threads": torch.get_num_threads(),
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        return record


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def _worker_setup(threads: int, sys_path: list[str], environ: dict[str, str]) -> None:
    # Child processes must find the same modules (a suite's ``imports``) and the same data/cache roots.
    for p in reversed(sys_path):
        if p not in sys.path:
            sys.path.insert(0, p)
    os.environ.update(environ)
    import torch

    torch.set_num_threads(threads)  # a scenario's runtime.threads > 0 still wins at reset


def _forwarded_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("LBW_")}


_RUNNER: Runner | None = None


def _pool_init(suite: SuiteConfig, threads: int, sys_path: list[str], environ: dict[str, str]) -> None:
    global _RUNNER
    _worker_setup(threads, sys_path, environ)
    _RUNNER = Runner(suite, "process")


def _pool_run(task: Task) -> dict[str, Any]:
    assert _RUNNER is not None, "worker not initialised"
    try:
        return _RUNNER.run(task)
    except Exception as e:  # send a plain, picklable error that names the task
        import traceback

        raise RuntimeError(f"task {task.key} failed: {type(e).__name__}: {e}\n{traceback.format_exc()}") from None


def _run_local(suite: SuiteConfig, tasks: list[Task], workers: int) -> Iterator[dict[str, Any]]:
    runner = Runner(suite, "local")
    for task in tasks:
        yield runner.run(task)


def _run_process(suite: SuiteConfig, tasks: list[Task], workers: int) -> Iterator[dict[str, Any]]:
    workers = max(1, min(workers, len(tasks)))
    threads = max(1, available_cores() // workers)
    # forkserver: workers fork from a clean server process (never from this one, which may hold torch threads);
    # spawn where forkserver does not exist.
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    if method == "forkserver":
        # Preloading torch and the env in the server makes each worker's start a fork, not a fresh import.
        ctx.set_forkserver_preload(["lbw_env.evaluation", "lbw_env.env", "policies.base"])
    with ctx.Pool(workers, _pool_init, (suite, threads, list(sys.path), _forwarded_environ())) as pool:
        yield from pool.imap_unordered(_pool_run, tasks, chunksize=1)


class _RayWorker:
    """A Ray actor holding one :class:`Runner`."""

    def __init__(self, suite: SuiteConfig, threads: int, sys_path: list[str], environ: dict[str, str]) -> None:
        _worker_setup(threads, sys_path, environ)
        self.runner = Runner(suite, "ray")

    def run(self, task: Task) -> dict[str, Any]:
        return self.runner.run(task)


def _run_ray(suite: SuiteConfig, tasks: list[Task], workers: int) -> Iterator[dict[str, Any]]:
    try:
        import ray
    except ImportError:
        raise ConfigError("executor 'ray': Ray is not installed; pip install 'lbw-env[ray]' (ray>=2.9)") from None
    workers = max(1, min(workers, len(tasks)))
    threads = max(1, available_cores() // workers)
    started = not ray.is_initialized()
    if started:
        # A private local instance (address="local"), sized to the workers; small object store, since records
        # are a few kB.
        ray.init(
            address="local",
            num_cpus=workers,
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=128 * 1024 * 1024,
            logging_level="warning",
        )
    actor_cls = ray.remote(num_cpus=1)(_RayWorker)
    actors = [actor_cls.remote(suite, threads, list(sys.path), _forwarded_environ()) for _ in range(workers)]
    queue = iter(tasks)
    pending: dict[Any, Any] = {}
    try:
        for actor in actors:
            task = next(queue, None)
            if task is not None:
                pending[actor.run.remote(task)] = actor
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            actor = pending.pop(ref)
            yield ray.get(ref)
            task = next(queue, None)
            if task is not None:
                pending[actor.run.remote(task)] = actor
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()


EXECUTORS: dict[str, Callable[[SuiteConfig, list[Task], int], Iterator[dict[str, Any]]]] = {
    "local": _run_local,
    "process": _run_process,
    "ray": _run_ray,
}


@dataclasses.dataclass
class RunSummary:
    """What :func:`run_suite` did."""

    out: Path
    plan: Plan
    records: list[dict[str, Any]]
    """All complete records in the store after the run (earlier runs' included)."""
    ran: int
    """Tasks run now."""
    skipped: int
    """Tasks skipped because their records already existed."""
    notes: list[str]
    """Warnings of the plan and of loading the store."""


def run_suite(
    suite: SuiteConfig,
    out: str | os.PathLike[str] | None = None,
    *,
    executor: Executor | str | None = None,
    workers: int = 1,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    on_start: Callable[[int, int, list[str]], None] | None = None,
) -> RunSummary:
    """Run every task of ``suite`` that ``out`` has no record of yet; write each record as it arrives.

    ``out`` defaults to ``results/<suite name>``. Nothing is created there unless the suite passed
    :func:`prepare`. ``executor`` None: ``process`` if ``workers > 1``, else ``local``.
    ``on_start(total, todo, notes)`` is called once before running, ``on_record`` after each write.
    """
    if executor is None:
        executor = "process" if workers > 1 else "local"
    if executor not in EXECUTORS:
        raise ConfigError(f"executor: expected one of {', '.join(EXECUTORS)}, got {executor!r}")
    if workers < 1:
        raise ConfigError(f"workers: expected an int >= 1, got {workers!r}")
    plan = prepare(suite)
    folder = Path(out) if out is not None else Path("results") / suite.name
    store = RecordStore(folder)  # reads only; the folder is created on open()
    notes = list(plan.warnings) + list(store.dropped)
    existing = {record_key(r): r for r in store.records}
    for key, h in plan.hashes.items():
        old = existing.get(key)
        if old is not None and old.get("config_hash") != h:
            raise ConfigError(
                f"{store.path}: the record {key} was made with a different configuration (config_hash "
                f"{old.get('config_hash')} != {h}); use another output folder or delete the old records"
            )
    done = store.done_keys()
    todo = [t for t in plan.tasks if t.key not in done]
    if on_start is not None:
        on_start(len(plan.tasks), len(todo), notes)
    ran = 0
    if todo:
        with store:
            store.open()
            for record in EXECUTORS[executor](suite, todo, workers):
                if store.append(record):
                    ran += 1
                if on_record is not None:
                    on_record(record)
    # Plan order (scenario, seed, arm), whatever order the executor delivered them in; records of tasks
    # outside this plan (earlier runs into the same folder) follow in file order.
    order = {t.key: i for i, t in enumerate(plan.tasks)}
    records = sorted(store.records, key=lambda r: order.get(record_key(r), len(order)))
    return RunSummary(folder, plan, records, ran, len(plan.tasks) - len(todo), notes)
