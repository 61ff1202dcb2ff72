"""Scenarios and families: the WikiText stress suite as configuration, cut into train, val and test splits.

A *scenario* is one fully specified training run to be governed: model preset, regime (from scratch or
fine-tuning a cached base checkpoint), base LR and schedule, steps, batch/sequence size, optional clipping
baseline and injected faults. Scenarios come in *families*: the shipped ``configs/scenarios/<family>.yaml``
(LR stress, LoRA, full-parameter, model-size ladder, clipping baselines, runtime faults, and a tiny family for
tests and RL smoke runs), or a family file anywhere on disk, named by its path (``my/family.yaml``).

Splits: a benchmark can only be trusted if what it reports was not used to build what it reports on.

* ``train`` — RL training pools and rule tuning;
* ``val`` — model selection (the learner's evaluation episodes) and threshold calibration;
* ``test`` — reported by evaluation suites and used for nothing else (:func:`require_not_test` refuses it to
  training and selection). Test scenarios differ from train/val in the *kind* or *magnitude* of the stress,
  not only in the seed, and fine-tune families fine-tune another base checkpoint there (``base_seed``).

Seeds are split as well: evaluation episode ``s`` of a scenario resets the env with
:func:`evaluation_seed` ``(split, s)``, a block of :data:`SEED_BLOCK` reset seeds per split (train 0..9999,
val 10000..19999 — where the learner's selection episodes, ``eval.seed_offset = 10000``, also live —, test
20000..29999). RL training resets its envs with ``seed + i`` once and then continues their generators, on train
scenarios only. The env derives the run seed (initialisation, batch order, faults) from the reset seed.

Family file layout::

    family: lr_stress                                          # default: the file's stem
    description: ...
    defaults: {model: {preset: qwen2-s}, optim: {...}, ...}    # a TrainerConfig mapping shared by all
    scenarios:
      - name: ref                                              # full name: lr_stress/ref
        split: train                                           # train (default), val or test
        description: ...
        trainer: {optim: {lr: 1.0e-3}}                         # merged over the defaults

Specs (``resolve``): ``family/name``, ``family`` (all splits), ``family:train|val|test``, ``path.yaml`` and
``path.yaml:train|val|test``. Loading a family file by path registers its family name for this process, so
``family/name`` then finds its scenarios too.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, cast, get_args

import yaml

from .config import ConfigError, config_dir, config_names, deep_merge, from_dict, parse_overrides
from .plant.config import TrainerConfig, expand_presets

Split = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = get_args(Split)

RETIRED_SPLIT = (
    "the split 'heldout' was retired: use 'val' (model selection, threshold calibration) or 'test' "
    "(reported by evaluation suites only)"
)

SEED_BLOCK = 10_000
"""Reset seeds per split: evaluation seeds of a suite must be below this."""
SPLIT_SEED_BASE: dict[str, int] = {"train": 0, "val": SEED_BLOCK, "test": 2 * SEED_BLOCK}
"""First reset seed of each split's block (see :func:`evaluation_seed`)."""

FAMILY_SUFFIXES = (".yaml", ".yml")
_FAMILY_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


@dataclasses.dataclass
class Scenario:
    """One governed training run of the suite."""

    name: str
    """Full name, ``<family>/<name>``."""
    family: str
    """The family it belongs to."""
    split: Split
    """``train``: RL training and rule tuning; ``val``: model selection and calibration; ``test``: reporting
    only."""
    description: str
    """What stress it applies and why."""
    trainer: TrainerConfig
    """The resolved training configuration."""
    source: str = ""
    """The family file it was read from."""
    source_hash: str = ""
    """sha256 of the family file's bytes: which version of the family a record was made with."""


# ----------------------------------------------------------------------------------------------------------
# Family files
# ----------------------------------------------------------------------------------------------------------

_USER_FAMILIES: dict[str, Path] = {}
"""Family name -> file, for families loaded by path in this process (so that ``family/name`` finds them)."""


def families() -> list[str]:
    """The shipped scenario families: ``configs/scenarios/<family>.yaml``."""
    return config_names("scenarios")


def is_family_path(spec: str | os.PathLike[str]) -> bool:
    """Whether a family spec is a file path (it ends in ``.yaml``/``.yml``) rather than a family name."""
    return str(spec).endswith(FAMILY_SUFFIXES)


def _family_file(family: str | os.PathLike[str]) -> Path:
    """The file of a family name (shipped, or loaded by path earlier) or of a path; a clear error if none."""
    if is_family_path(family):
        path = Path(family).expanduser()
        if not path.is_file():
            raise ConfigError(f"scenario family file {str(family)!r}: no such file")
        return path.resolve()
    name = str(family)
    shipped = config_dir() / "scenarios" / f"{name}.yaml"
    if shipped.is_file():
        return shipped.resolve()
    if name in _USER_FAMILIES:
        return _USER_FAMILIES[name]
    loaded = f"; family files loaded so far: {', '.join(sorted(_USER_FAMILIES))}" if _USER_FAMILIES else ""
    raise ConfigError(
        f"scenario family {name!r}: no file {shipped}; expected one of {', '.join(families())}, "
        f"or the path of a family file (ending in .yaml){loaded}"
    )


def load_family(family: str | os.PathLike[str]) -> dict[str, Scenario]:
    """All scenarios of a family, validated: a shipped family by name, or any family file by its path."""
    path = _family_file(family)
    data = path.read_bytes()
    scenarios = _parse_family(path, hashlib.sha256(data).hexdigest(), data)
    name = next(iter(scenarios.values())).family
    shipped = (config_dir() / "scenarios" / f"{name}.yaml").resolve()
    if shipped.is_file() and shipped != path:
        raise ConfigError(f"{path}: family {name!r} is a shipped family ({shipped}); give the file another family")
    other = _USER_FAMILIES.get(name)
    if not shipped.is_file() and other not in (None, path):
        raise ConfigError(f"{path}: family {name!r} is already loaded from {other}; give the file another family")
    if not shipped.is_file():
        _USER_FAMILIES[name] = path
    return scenarios


@functools.cache
def _parse_family(path: Path, sha256: str, data: bytes) -> dict[str, Scenario]:
    """The scenarios of one version (``sha256``) of a family file; cached, so an edited file is read anew."""
    try:
        doc = yaml.safe_load(data.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"scenario family file {path}: not valid YAML ({e})") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"scenario family file {path}: expected a mapping at the top level")
    unknown = set(doc) - {"family", "description", "defaults", "scenarios"}
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; expected family, description, defaults, scenarios")
    family = str(doc.get("family") or path.stem)
    if not _FAMILY_NAME.match(family) or is_family_path(family):
        raise ConfigError(f"{path}: family: expected a name of letters, digits, '_', '.', '-', got {family!r}")
    defaults = doc.get("defaults") or {}
    out: dict[str, Scenario] = {}
    for i, item in enumerate(doc.get("scenarios") or []):
        scenario = _parse_scenario(f"{path}: scenarios[{i}]", family, defaults, item)
        if scenario.name in out:
            raise ConfigError(f"{path}: scenarios[{i}]: duplicate scenario name {scenario.name!r}")
        out[scenario.name] = dataclasses.replace(scenario, source=str(path), source_hash=sha256)
    if not out:
        raise ConfigError(f"{path}: no scenarios")
    return out


def _parse_scenario(where: str, family: str, defaults: dict[str, Any], item: Any) -> Scenario:
    """One entry of a family's ``scenarios`` list."""
    if not isinstance(item, dict) or "name" not in item:
        raise ConfigError(f"{where}: expected a mapping with at least a 'name'")
    extra = set(item) - {"name", "split", "description", "trainer"}
    if extra:
        raise ConfigError(f"{where}: unknown keys {sorted(extra)}; expected name, split, description, trainer")
    split = check_split(item.get("split", "train"), f"{where}.split")
    if "/" in str(item["name"]):
        raise ConfigError(f"{where}.name: expected a name without '/', got {item['name']!r}")
    try:
        trainer = from_dict(TrainerConfig, expand_presets(deep_merge(defaults, item.get("trainer") or {})))
    except ConfigError as e:
        raise ConfigError(f"{where}.trainer.{e}") from None
    return Scenario(f"{family}/{item['name']}", family, split, str(item.get("description", "")), trainer)


def check_split(split: Any, where: str) -> Split:
    """``split`` as a :data:`Split`; ``heldout`` (the old vocabulary) fails with what to use now."""
    if split == "heldout":
        raise ConfigError(f"{where}: {RETIRED_SPLIT}")
    if split not in SPLITS:
        raise ConfigError(f"{where}: expected one of {', '.join(SPLITS)}, got {split!r}")
    return cast(Split, split)


# ----------------------------------------------------------------------------------------------------------
# Specs
# ----------------------------------------------------------------------------------------------------------


def get_scenario(name: str) -> Scenario:
    """A scenario by full name (``family/name``)."""
    family = name.split("/", 1)[0]
    scenarios = load_family(family)
    if name not in scenarios:
        raise ConfigError(f"scenario {name!r}: not in family {family!r}; expected one of {', '.join(scenarios)}")
    return scenarios[name]


def resolve(specs: Sequence[str]) -> list[Scenario]:
    """Scenarios from specs: ``family/name``, ``family`` (all), ``family:train|val|test``, ``path.yaml`` or
    ``path.yaml:train|val|test`` (a family file anywhere on disk)."""
    out: list[Scenario] = []
    for spec in specs:
        family, split = str(spec), ""
        if not is_family_path(family) and ":" in family:
            family, _, split = family.rpartition(":")
            check_split(split, f"scenario spec {spec!r}")
        elif not is_family_path(family) and "/" in family:
            out.append(get_scenario(family))
            continue
        if "/" in family and not is_family_path(family):
            raise ConfigError(f"scenario spec {spec!r}: expected family/name, family[:split] or path.yaml[:split]")
        out.extend(s for s in load_family(family).values() if not split or s.split == split)
    if not out:
        raise ConfigError(f"scenario specs {list(specs)}: selected no scenario")
    return out


def with_overrides(scenario: Scenario, overrides: Sequence[str] | dict[str, Any]) -> Scenario:
    """A copy of ``scenario`` with trainer ``key=value`` overrides (e.g. ``runtime.threads=1``) applied.

    ``optim.lr=tuned`` sets the LR that the committed train/val sweep chose for the scenario's family and model
    (:func:`tuned_lr`): one arm is then the tuned AdamW of every scenario of a suite, whatever its model."""
    if not overrides:
        return scenario
    update = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    base = dataclasses.asdict(scenario.trainer)
    if "preset" in (update.get("model") or {}):
        # A new preset brings its own architecture; keep only the placement keys of the old model section.
        base["model"] = {k: v for k, v in base["model"].items() if k in ("device", "dtype", "lora")}
    merged = deep_merge(base, update)
    for section in ("optim", "model"):  # read below before from_dict checks the types
        if not isinstance(merged.get(section), dict):
            raise ConfigError(f"{section}: expected a mapping of its fields, got {merged.get(section)!r}")
    if merged["optim"].get("lr") == TUNED:
        preset = "" if merged["model"].get("pretrained") else str(merged["model"].get("preset", ""))
        merged["optim"]["lr"] = tuned_lr(scenario.family, preset, str(merged.get("regime", "")))
    trainer = from_dict(TrainerConfig, expand_presets(merged))
    return dataclasses.replace(scenario, trainer=trainer)


TUNED = "tuned"
"""The value of ``optim.lr`` that stands for the family's tuned LR (:func:`tuned_lr`)."""


def tuned_lrs_path() -> Path:
    """``configs/baselines/adamw_tuned.yaml``: the tuned-AdamW LR per family, written by
    ``benchmarks/tune_adamw.py`` from a train/val sweep (never by hand)."""
    return config_dir() / "baselines" / "adamw_tuned.yaml"


def tuned_lr(family: str, preset: str = "", regime: str = "") -> float:
    """The tuned AdamW LR of ``family`` on model ``preset`` in ``regime``: the first entry of
    :func:`tuned_lrs_path` among ``<family>/<preset>`` (a family whose models want their own LR, e.g.
    ``lora_stress/qwen2-m``), ``<family>/<regime>`` (a family that trains from scratch and fine-tunes, e.g.
    ``tiny/finetune``: a careful user tunes each) and ``<family>``. Raises ConfigError naming the missing entries
    and the command that makes them."""
    path = tuned_lrs_path()
    try:
        table = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    keys = [f"{family}/{part}" for part in (preset, regime) if part] + [family]
    for key in keys:
        entry = table.get(key)
        if isinstance(entry, dict) and isinstance(entry.get("lr"), (int, float)):
            return float(entry["lr"])
    raise ConfigError(
        f"optim.lr=tuned: no tuned LR for {' or '.join(keys)} in {path}; expected an entry with an lr, written by "
        f"benchmarks/tune_adamw.py from the family's train/val scenarios"
    )


# ----------------------------------------------------------------------------------------------------------
# Enforcing the splits
# ----------------------------------------------------------------------------------------------------------


def require_not_test(scenarios: Iterable[Scenario | str], purpose: str) -> list[Scenario]:
    """``scenarios`` (objects or specs), unless one of them is in the test split: then a ConfigError.

    Every consumer that learns from scenarios calls this: RL training pools, the learner's model selection,
    threshold calibration. A test scenario that shaped a governor no longer measures how it generalises.
    """
    resolved = [s for item in scenarios for s in (resolve([item]) if isinstance(item, str) else [item])]
    test = [s.name for s in resolved if s.split == "test"]
    if test:
        raise ConfigError(
            f"{purpose}: {', '.join(test)} {'is' if len(test) == 1 else 'are'} in the test split; the test split is "
            f"for reporting only (evaluation suites), never for training, tuning, calibration or model selection. "
            f"Train and tune on family:train, select and calibrate on family:val"
        )
    return resolved


def evaluation_seed(split: str, seed: int) -> int:
    """The ``reset`` seed of evaluation episode ``seed`` (0, 1, ... of a suite) on a scenario of ``split``.

    Each split has its own block of :data:`SEED_BLOCK` reset seeds, so a test episode never replays the
    initialisation, batch order or faults of a train or val episode: train ``seed``, val ``10000 + seed``,
    test ``20000 + seed``. Train keeps ``seed`` itself, so train-split records are those of before the splits.
    """
    if split not in SPLIT_SEED_BASE:
        check_split(split, "split")
    if not 0 <= seed < SEED_BLOCK:
        raise ConfigError(f"evaluation seed: expected an int in [0, {SEED_BLOCK}), got {seed!r}")
    return SPLIT_SEED_BASE[split] + seed


def check_scenario_data(scenarios: Iterable[tuple[str, TrainerConfig]], where: str) -> None:
    """Load and check the data of ``(scenario name, trainer config)`` pairs, once per distinct data config: data
    root, split files (present, non-empty, decodable) and enough tokens for a batch and an evaluation block.

    The caches this fills are the ones the runs read, so the check costs no extra work; without it a missing file
    fails the first episode after the output folder was created. Raises :class:`ConfigError` in one line naming
    ``where``, the scenario and the file. Used by evaluation (before the first run) and learning (before a run
    folder exists)."""
    # Imported here: the data layer loads torch and tokenizers, which reading configs and suites does without.
    from .cache import CacheError, stable_hash
    from .config import to_dict
    from .plant.data import check_data
    from .plant.sources import DataError

    checked: set[str] = set()
    for name, trainer in scenarios:
        key = stable_hash(to_dict(trainer.data), trainer.runtime.cache_dir)
        if key in checked:
            continue
        try:
            check_data(trainer.data, trainer.runtime.cache_dir)
        except (DataError, CacheError) as e:
            raise ConfigError(f"{where}: scenario {name!r}: {' '.join(str(e).split())}") from None
        checked.add(key)
