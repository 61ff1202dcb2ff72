"""Suites and plans: what an evaluation runs, loaded strictly and checked completely before anything runs.

A *suite* (``configs/suites/<name>.yaml``) names scenarios, *arms* (a governor plus optional trainer overrides:
the clipping baselines are ``adamw`` with ``optim.clip_norm``) and a number of seeds. :func:`prepare` expands
it into tasks ``scenario x arm x seed`` with a config hash each. Everything that can be wrong with a suite
(unknown keys, an unknown governor or scenario, a missing model file, a bad trainer override, a governor whose
observation or action shape does not fit the env) is found there, and :func:`check_data` loads and checks
every data source the tasks will read; both run before the first episode starts and before the output folder
is touched: a typo must cost seconds, not the hours of runs that would precede the failing one.

Governors are built by a :data:`~lbw_env.control.protocol.GovernorFactory` the caller passes in (the CLI
passes ``policies.make_governor``): the engine never imports the governors it evaluates.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..cache import stable_hash
from ..config import (
    ConfigError,
    check,
    config_dir,
    deep_merge,
    from_dict,
    parse_overrides,
    read_yaml,
    to_dict,
)
from ..control.protocol import Governor, GovernorFactory
from ..plant.config import hashable_trainer
from ..scenarios import SEED_BLOCK, Scenario, check_scenario_data, get_scenario, load_family, resolve, with_overrides
from .arms import named_arm
from .records import RecordKey
from .stats import reference_of

if TYPE_CHECKING:  # both load torch; suites and reports are read without it
    from ..control.envelope import EnvelopeConfig
    from ..env import EnvConfig


# ----------------------------------------------------------------------------------------------------------
# Suite configuration
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Arm:
    """One column of the comparison: a governor, optionally on a modified trainer."""

    label: str = ""
    """Name of the arm in records and reports (empty: the governor spec). Must be unique in the suite."""
    governor: str = ""
    """Governor spec for the governor factory (``policies.make_governor``): ``adamw``, ``lbw_guard``,
    ``skip_step``, ``ppo:<path>`` ... Required: an arm mapping that lost its ``governor:`` line must not run
    plain AdamW under its label."""
    trainer_overrides: list[str] = dataclasses.field(default_factory=list)
    """``key=value`` trainer overrides for this arm only, applied after ``env.trainer_overrides``. Clipping
    baselines are ``adamw`` with ``optim.clip_norm=1.0``: clipping is a trainer option, not a governor."""
    env_overrides: list[str] = dataclasses.field(default_factory=list)
    """``key=value`` overrides of the suite's ``env`` for this arm only (e.g. ``envelope.auto_rollback=true``:
    AdamW with the envelope's rollback). Part of the config hash through the env config they make; none leaves
    the hash of an arm as it was before arms had them."""

    def validate(self) -> None:
        """Default the label to the governor spec (bare arms in YAML), then check the spec."""
        if not self.label:
            self.label = self.governor
        check(bool(self.governor), "governor", "a non-empty governor spec", self.governor)
        keys = set(parse_overrides(self.env_overrides))
        for key in ("scenarios", "trainer_overrides"):
            check(key not in keys, "env_overrides", f"no {key} (set it elsewhere: trainer_overrides)", key)


@dataclasses.dataclass
class SuiteConfig:
    """A suite: scenarios x arms x seeds, and how to run and report them."""

    name: str = ""
    """Name of the suite (default output folder ``results/<name>/``). Empty: the file's stem."""
    description: str = ""
    """What the suite is for."""
    scenarios: list[str] = dataclasses.field(default_factory=lambda: ["tiny"])
    """Scenario specs for ``scenarios.resolve``: ``family/name``, ``family`` (all of it), ``family:train``,
    ``family:val`` or ``family:test``. Family specs pick up whatever scenarios the family file has."""
    arms: list[Arm] = dataclasses.field(default_factory=lambda: [Arm("adamw", "adamw"), Arm("lbw_guard", "lbw_guard")])
    """Arms to compare. In YAML an arm may be a bare string: a named baseline arm (``adamw_warmup``, ``zclip``,
    ``prodigy`` ...: :data:`~lbw_env.evaluation.arms.NAMED_ARMS`) or else a governor spec (``lbw_guard``: label =
    spec)."""
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
    governor with the registry of the governor factory, e.g. ``policies.register``)."""

    def validate(self) -> None:
        """Check every field, including the env mapping, so that a bad suite fails at load time."""
        # Evaluation seeds index a block of SEED_BLOCK reset seeds per split: beyond it an episode would refuse
        # them, after every earlier seed's runs (and a huge count would build its task list until memory ran out).
        check(1 <= self.seeds <= SEED_BLOCK, "seeds", f"an int in [1, {SEED_BLOCK}]", self.seeds)
        check(self.eval_every >= 0, "eval_every", "an int >= 0 (0: only at the end)", self.eval_every)
        check(bool(self.scenarios), "scenarios", "a non-empty list of scenario specs", self.scenarios)
        check(bool(self.arms), "arms", "a non-empty list of arms", self.arms)
        labels = [a.label for a in self.arms]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        check(not dup, "arms", f"unique labels (duplicated: {', '.join(dup)})", labels)
        check("scenarios" not in self.env, "env.scenarios", "nothing: scenarios are set at the top level", "a value")
        self.env_config([])  # raises ConfigError naming env.<key>

    def env_config(self, extra_overrides: Sequence[str] = (), env_overrides: Sequence[str] = ()) -> EnvConfig:
        """The :class:`~lbw_env.env.EnvConfig` of this suite, with an arm's trainer overrides appended and its
        env overrides applied."""
        # Imported here, not at the top: lbw_env.env loads torch, and reading suites or writing a report from
        # existing records (``import lbw_env.evaluation``) should not.
        from ..env import EnvConfig

        data = deep_merge(dict(self.env), parse_overrides(env_overrides)) if env_overrides else dict(self.env)
        data["scenarios"] = list(self.scenarios)
        overrides = data.get("trainer_overrides") or []
        if not isinstance(overrides, list):  # a string would be read as a list of one-letter overrides
            raise ConfigError(f"env.trainer_overrides: expected a list of key=value strings, got {overrides!r}")
        data["trainer_overrides"] = [*overrides, *extra_overrides]
        return from_dict(EnvConfig, data, "env")

    def arm_env(self, arm: Arm) -> EnvConfig:
        """The env config ``arm`` runs in: the suite's, with the arm's trainer and env overrides."""
        return self.env_config(arm.trainer_overrides, arm.env_overrides)


def suites_dir() -> Path:
    """``configs/suites/``: where named suites live."""
    return config_dir() / "suites"


def available_suites() -> list[str]:
    """Names of the shipped suites (``evaluate.py --list``)."""
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


def _bare_arm(name: str) -> dict[str, Any]:
    """A bare string in ``arms``: a named baseline arm (:data:`~.arms.NAMED_ARMS`), else a governor spec."""
    return named_arm(name) or {"label": name, "governor": name}


def _normalise_arms(data: dict[str, Any]) -> dict[str, Any]:
    """Bare strings in ``arms`` (``[adamw, adamw_warmup, lbw_guard]``) become arm mappings: a named arm's, or
    ``{label: spec, governor: spec}`` for a governor spec."""
    arms = data.get("arms")
    if isinstance(arms, list):
        data["arms"] = [_bare_arm(a) if isinstance(a, str) else a for a in arms]
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
        merged = deep_merge(data, parse_overrides(overrides))
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
    def key(self) -> RecordKey:
        """The key of the record this task produces."""
        return (self.scenario, self.arm.label, self.seed)


@dataclasses.dataclass
class Plan:
    """A suite after full validation: resolved scenarios, tasks in run order, and their config hashes."""

    suite: SuiteConfig
    scenarios: list[Scenario]
    tasks: list[Task]
    hashes: dict[RecordKey, str]
    """Task key -> config hash (:func:`task_hash`): stored records with another hash are refused."""
    reference: dict[str, str]
    """Scenario -> its time-to-target reference scenario (see :attr:`SuiteConfig.reference`)."""
    warnings: list[str]


def task_hash(env_cfg: Any, arm: Arm, trainer_cfg: Any, eval_every: int) -> str:
    """What decides a record's content: a record whose hash differs was made by another configuration.

    ``env_cfg`` is the env the arm runs in (:meth:`SuiteConfig.arm_env`). Trainer fields added after records were
    first committed are left out while they hold the value that reproduces the old runs
    (:data:`~lbw_env.plant.config.LATER_FIELDS`), so that adding a field leaves committed records valid."""
    env = {k: v for k, v in to_dict(env_cfg).items() if k not in ("scenarios", "trainer_overrides")}
    return stable_hash(env, arm.governor, hashable_trainer(to_dict(trainer_cfg)), eval_every)


def import_modules(names: Iterable[str]) -> None:
    """Import a suite's ``imports`` (modules that register custom governors), failing as a ConfigError."""
    for name in names:
        if not isinstance(name, str) or not name or name.startswith("."):
            raise ConfigError(f"imports: expected absolute module names (e.g. my_package.governors), got {name!r}")
        try:
            importlib.import_module(name)
        except Exception as e:  # the user's module may fail any way (SyntaxError, its own errors): one line
            raise ConfigError(f"imports: cannot import {name!r} ({type(e).__name__}: {e})") from None


def make_arm_governor(arm: Arm, envelope: EnvelopeConfig, make_governor: GovernorFactory) -> Governor:
    """The arm's governor from ``make_governor``; any failure (unknown name, missing model file, bad argument)
    as a ConfigError naming the arm and the spec (which holds the path of a model file)."""
    try:
        return make_governor(arm.governor, envelope)
    except ConfigError as e:
        raise ConfigError(f"arm {arm.label!r}: {e}") from None
    except Exception as e:  # a factory may raise anything for a bad argument: report it, don't run
        raise ConfigError(f"arm {arm.label!r}: governor {arm.governor!r}: {type(e).__name__}: {e}") from e


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def check_governor_fits(arm: Arm, governor: Governor, env_cfg: EnvConfig) -> None:
    """Refuse a governor that cannot drive the arm's env: it must take an observation of the env's shape and
    answer with an action of the env's action space (its size; floats for a Box, integer bins for
    MultiDiscrete). A learned governor's declared training settings and spaces are checked first
    (:mod:`lbw_env.control.compat`); then every governor is probed with one ``predict`` on a reset-shaped
    observation, as the episode will call it.

    Without this, a window-4 learned governor in a window-8 env (or a discrete one in a continuous env) fails
    mid-run with a broadcasting error, or worse, runs with its actions silently clipped into another meaning.
    """
    # Imported here, as in env_config: the envelope loads torch, which reading a suite does without.
    from ..control.compat import check_compatible, check_settings
    from ..control.features import FEATURE_NAMES
    from ..control.governance import Governance

    governance: Governance[Any] = Governance(env_cfg)
    obs_space, act_space = governance.observation_space(), governance.action_space
    where = f"arm {arm.label!r}: governor {arm.governor!r}"
    try:  # what a learned governor declares (training settings, spaces): the most specific message first
        check_settings(governor, env_cfg)
        check_compatible(governor, observation_space=obs_space, action_space=act_space)
    except ConfigError as e:
        raise ConfigError(f"arm {arm.label!r}: {_one_line(e)}") from None
    try:  # then what any governor does: one predict, as the episode calls it
        action, _ = governor.predict(
            np.zeros(obs_space.shape, dtype=np.float32),
            state=None,
            episode_start=np.ones((1,), dtype=bool),
            deterministic=True,
        )
        action = np.asarray(action)
    except Exception as e:  # a governor may raise anything for a wrong shape: report it, don't run
        raise ConfigError(
            f"{where}: does not take this env's observations of shape {obs_space.shape} "
            f"(env.window={env_cfg.window} x {len(FEATURE_NAMES)} features): {type(e).__name__}: {_one_line(e)}"
        ) from None
    mode = f"env.envelope.action_mode={env_cfg.envelope.action_mode}"
    expected = int(np.prod(act_space.shape or ()))
    if action.size != expected:
        raise ConfigError(
            f"{where}: answered an action of shape {action.shape}; expected {expected} numbers for this env's "
            f"{act_space} ({mode}, rollback_action={env_cfg.envelope.rollback_action})"
        )
    discrete = env_cfg.envelope.action_mode == "discrete"
    if discrete and not np.issubdtype(action.dtype, np.integer):
        raise ConfigError(f"{where}: answered {action.dtype} values; expected integer bins for {act_space} ({mode})")
    if not discrete and not np.issubdtype(action.dtype, np.floating):
        raise ConfigError(
            f"{where}: answered {action.dtype} values; expected floats in [-1, 1] for {act_space} ({mode})"
        )


def check_data(plan: Plan, tasks: Iterable[Task] | None = None) -> None:
    """Load and check the data of every (scenario, arm) among ``tasks`` (default: all of the plan's), once per
    distinct data config: data root, split files (present, non-empty, decodable) and enough tokens for a batch
    and an evaluation block. The caches this fills are the ones the runs read, so the check costs no extra work;
    without it, a missing file fails the first episode after the output folder was created (or the hundredth,
    for a scenario that comes late). Raises :class:`ConfigError` naming the scenario and the file."""
    scenarios = {s.name: s for s in plan.scenarios}
    arms = {a.label: a for a in plan.suite.arms}
    pairs = []
    for task in plan.tasks if tasks is None else tasks:
        overrides = plan.suite.env_config(arms[task.arm.label].trainer_overrides).trainer_overrides
        pairs.append((task.scenario, with_overrides(scenarios[task.scenario], overrides).trainer))
    check_scenario_data(pairs, f"suite {plan.suite.name!r}")


def prepare(suite: SuiteConfig, make_governor: GovernorFactory) -> Plan:
    """Resolve and check everything a run needs but the data, building each arm's governor once with
    ``make_governor`` (so unknown names and missing model files fail here) and probing it against the arm's env
    (:func:`check_governor_fits`). Raises :class:`ConfigError` naming the faulty thing. No data is read: see
    :func:`check_data`, which :func:`~.run.run_suite` calls for the tasks it will run."""
    from ..plant.runtime import check_device  # torch: this module stays importable without it (evaluate --help)

    where = f"suite {suite.name!r}"
    try:
        import_modules(suite.imports)
        scenarios = list({s.name: s for s in resolve(suite.scenarios)}.values())  # deduplicated, in order
        hashes: dict[RecordKey, str] = {}
        for arm in suite.arms:
            env_cfg = suite.arm_env(arm)
            check_governor_fits(arm, make_arm_governor(arm, env_cfg.envelope, make_governor), env_cfg)
            for s in scenarios:
                try:
                    trainer = with_overrides(s, env_cfg.trainer_overrides).trainer
                    check_device(trainer.model.device)
                except ConfigError as e:
                    raise ConfigError(
                        f"arm {arm.label!r}: trainer overrides {env_cfg.trainer_overrides}: {e}"
                    ) from None
                h = task_hash(env_cfg, arm, trainer, suite.eval_every)
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
