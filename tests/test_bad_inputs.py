"""Bad input, as a new user would type it, through the command lines: one line naming the thing, exit 2, nothing
left behind.

Each case runs ``evaluate.main(argv)`` or ``train_policy.main(argv)`` in this process and checks the exit status,
that stderr is exactly one line (``<cli>: error: ...``) that names the faulty field, file or governor, and that
no output folder, records file or run folder was created. Two cases run the scripts as subprocesses, to prove that
no traceback reaches stderr. No episode ever runs: every input is checked before the first one, which is the
point, and keeps the file fast. Data is tiny and written to ``tmp_path`` (bad data) or read from
the tiny WikiText cut of ``tests/tiny_wikitext.py`` (good data, for the cases that are bad elsewhere).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import yaml

import evaluate
import train_policy
from lbw_env.control.envelope import EnvelopeConfig
from lbw_env.control.features import FEATURE_NAMES, OBS_BOUND
from lbw_env.control.protocol import Governor
from policies import registry
from tests.tiny_wikitext import tiny_root

REPO = Path(__file__).resolve().parents[1]
TINY = ["optim.steps=8", "data.eval_blocks=2"]
SUITE: dict[str, Any] = {
    "name": "bad_inputs",
    "scenarios": ["tiny/ref"],
    "arms": ["adamw"],
    "seeds": 1,
    # A 2-number Box action space, stated rather than inherited: the misfit governors below answer 2 numbers.
    "env": {"decision_interval": 4, "trainer_overrides": TINY, "envelope": {"rollback_action": False}},
}


# ----------------------------------------------------------------------------------------------------------
# Governors that do not fit the env: a learned one trained with window 4, and one that answers in bins
# ----------------------------------------------------------------------------------------------------------


class WindowFourGovernor:
    """Stands in for a learned governor trained with ``window: 4``: it declares its observation space, and its
    ``predict`` refuses other shapes exactly as SB3's does."""

    observation_space = gym.spaces.Box(-OBS_BOUND, OBS_BOUND, (4 * len(FEATURE_NAMES),), dtype=np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
    spec = "window4"

    def predict(
        self, observation: np.ndarray, state: Any = None, episode_start: Any = None, deterministic: bool = False
    ):
        shape, own = np.shape(observation), self.observation_space.shape
        if shape[-1:] != own:
            raise ValueError(
                f"Error: Unexpected observation shape {shape} for Box environment, please use "
                f"{own} or (n_env, {own[0]}) for the observation shape."
            )
        return np.zeros(2, dtype=np.float32), state


class BinsGovernor:
    """Answers MultiDiscrete bins whatever the env's action space (a discrete-trained policy)."""

    def predict(
        self, observation: np.ndarray, state: Any = None, episode_start: Any = None, deterministic: bool = False
    ):
        return np.array([2, 4], dtype=np.int64), state


@pytest.fixture(autouse=True)
def setting(tmp_path: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Good data (the tiny assets), a private cache, and the two misfit governors registered for this test."""
    from lbw_env.plant import data

    monkeypatch.setenv("LBW_DATA_DIR", str(tiny_data))
    monkeypatch.setenv("LBW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register("window4")(lambda envelope, arg: WindowFourGovernor())
    registry.register("bins")(lambda envelope, arg: BinsGovernor())
    data.clear_memo()
    yield
    data.clear_memo()


def write_suite(folder: Path, **changes: Any) -> Path:
    path = folder / "suite.yaml"
    path.write_text(yaml.safe_dump({**SUITE, **changes}, sort_keys=False))
    return path


def data_root(tmp_path: Path, train: bytes | None = None, valid: bytes | None = None) -> Path:
    """A copy of the tiny data root with the train or valid file of ``wikitext-2`` / ``wikitext-103`` replaced."""
    root = tmp_path / "data"
    shutil.copytree(tiny_root(), root)
    if train is not None:
        (root / "wikitext-2" / "wiki.train.tokens").write_bytes(train)
    if valid is not None:
        (root / "wikitext-103" / "wiki.valid.tokens").write_bytes(valid)
    return root


def one_line(err: str) -> str:
    """The single line of stderr (fails when there are more, or none)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert "Traceback" not in err
    return lines[0]


# ----------------------------------------------------------------------------------------------------------
# evaluate.py
# ----------------------------------------------------------------------------------------------------------

Case = Callable[[Path, pytest.MonkeyPatch], list[str]]
"""(tmp_path, monkeypatch) -> extra argv after ``--suite <file> --out <tmp>/out``; sets the environment up."""


def _unset_root(tmp: Path, mp: pytest.MonkeyPatch) -> list[str]:
    mp.delenv("LBW_DATA_DIR")
    return []


def _missing_root(tmp: Path, mp: pytest.MonkeyPatch) -> list[str]:
    mp.setenv("LBW_DATA_DIR", str(tmp / "nowhere"))
    return []


def _relative_wrong_root(tmp: Path, mp: pytest.MonkeyPatch) -> list[str]:
    mp.chdir(tmp)
    mp.setenv("LBW_DATA_DIR", "../no/such/data")
    return []


def _bad_data(**files: bytes) -> Case:
    def case(tmp: Path, mp: pytest.MonkeyPatch) -> list[str]:
        mp.setenv("LBW_DATA_DIR", str(data_root(tmp, **files)))
        return []

    return case


def _argv(*extra: str) -> Case:
    return lambda tmp, mp: list(extra)


def _read_only_out(tmp: Path, mp: pytest.MonkeyPatch) -> list[str]:
    folder = tmp / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root ignores modes: use a read-only file system instead
        if os.access("/proc/sys", os.W_OK):
            pytest.skip("running as root without a read-only file system at hand")
        folder = Path("/proc/sys")
    return ["--out", str(folder / "results")]


EVALUATE_CASES: list[tuple[str, Case, list[str]]] = [
    ("unset LBW_DATA_DIR", _unset_root, ["LBW_DATA_DIR", "data.root"]),
    ("missing LBW_DATA_DIR", _missing_root, ["nowhere", "LBW_DATA_DIR", "not a folder"]),
    ("relative wrong LBW_DATA_DIR", _relative_wrong_root, ["../no/such/data", "working directory"]),
    ("empty train file", _bad_data(train=b""), ["wiki.train.tokens", "no text"]),
    ("blank train file", _bad_data(train=b" \n \n"), ["wiki.train.tokens", "no text"]),
    ("non-UTF-8 valid file", _bad_data(valid=" caf\xe9 \n".encode("latin-1")), ["wiki.valid.tokens", "UTF-8"]),
    (
        "train smaller than a batch",
        _bad_data(train=b" = A = \n a tiny train split \n"),
        ["wiki.train.tokens", "blocks"],
    ),
    ("unknown suite key", _argv("seedz=3"), ["seedz", "unknown key"]),
    ("unknown suite", lambda tmp, mp: ["--suite", "no_such_suite"], ["no_such_suite"]),
    ("unknown governor", _argv("--governors", "adamw", "bogus_rule"), ["bogus_rule", "unknown name"]),
    ("malformed YAML override", _argv("scenarios=[tiny/ref"), ["scenarios=[tiny/ref", "not valid YAML"]),
    ("unknown override key", _argv("env.windoww=8"), ["windoww"]),
    ("wrong type", _argv("seeds=three"), ["seeds", "expected int"]),
    ("non-finite LR", _argv("env.trainer_overrides=[optim.lr=.inf]"), ["lr", "finite"]),
    ("NaN weight decay", _argv("env.trainer_overrides=[optim.weight_decay=.nan]"), ["weight_decay", "finite"]),
    ("unknown scenario", _argv("scenarios=[tiny/nope]"), ["tiny/nope"]),
    (
        "window-4 governor, env.window=8",
        _argv("env.window=8", "--governors", "window4"),
        ["window4", "observation", f"({8 * len(FEATURE_NAMES)},)", f"({4 * len(FEATURE_NAMES)},)"],
    ),
    ("bins in a continuous env", _argv("--governors", "bins"), ["bins", "int64", "floats"]),
    ("rollback_action: 3 numbers", _argv("env.envelope.rollback_action=true", "--governors", "window4"), ["(2,)", "3"]),
    ("read-only output folder", _read_only_out, ["not writable"]),
    ("a file in the way of --out", lambda tmp, mp: ["--out", str(_file(tmp) / "sub")], ["not a folder"]),
    ("bad --workers", _argv("--workers", "0"), ["workers"]),
    # A NaN gate used to run as "never skip" and be reported as the skip rule (AdamW's numbers, to the bit).
    ("NaN skip gate", _argv("--governors", "adamw", "skip_step:nan"), ["skip_step:nan", "finite"]),
    ("an argument to plateau", _argv("--governors", "plateau:3"), ["plateau:3", "takes no argument"]),
    # Each of these used to end in a traceback, a core dump, a hang or a run of the wrong thing.
    ("huge vocabulary", _argv("env.trainer_overrides=[data.vocab_size=100000000000]"), ["vocab_size", "262144"]),
    ("unknown device", _argv("env.trainer_overrides=[model.device=bogus]"), ["model.device", "bogus"]),
    ("absent CUDA device", _argv("env.trainer_overrides=[model.device=cuda:99]"), ["model.device", "CUDA device"]),
    ("more seeds than a split has", _argv("--seeds", "10001"), ["seeds", "[1, 10000]"]),
    ("relative import", _argv("imports=[.foo]"), ["imports", "absolute module names"]),
    ("failing import", _argv("imports=[tests.no_such_module_here]"), ["imports", "tests.no_such_module_here"]),
    ("integer beyond any float", _argv("env.trainer_overrides=[optim.lr=1" + "0" * 400 + "]"), ["optim.lr"]),
    ("a section given a value", _argv("env.trainer_overrides=[optim=3]"), ["optim", "mapping"]),
    ("overrides as one string", _argv("env.trainer_overrides=optim.steps=8"), ["env.trainer_overrides", "list"]),
    ("an arm without a governor", _argv("arms=[{label: guard}]"), ["governor", "non-empty"]),
    ("empty --out", _argv("--out", ""), ["--out", "working directory"]),
    ("a preset given as a path", _argv("env.trainer_overrides=[model.preset=../suites/smoke]"), ["unknown preset"]),
    (
        "NaN guard threshold",
        lambda tmp, mp: ["--governors", f"lbw_guard:{_guard_file(tmp, spike_z='.nan')}"],
        ["spike_z"],
    ),
    ("argparse: --seeds x", _argv("--seeds", "x"), ["--seeds", "invalid int"]),
]


def _guard_file(tmp: Path, **changes: str) -> Path:
    path = tmp / "guard.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in changes.items()))
    return path


def _file(tmp: Path) -> Path:
    path = tmp / "a_file"
    path.write_text("not a folder")
    return path


def _table_row(what: str, line: str) -> None:
    """With ``LBW_BAD_INPUT_TABLE=<file>``, append ``| case | message |`` rows: the bad-input table of the docs is
    this test's own output, not a hand-copied list."""
    path = os.environ.get("LBW_BAD_INPUT_TABLE")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"| {what} | `{line}` |\n")


@pytest.mark.parametrize(("what", "case", "names"), EVALUATE_CASES, ids=[c[0] for c in EVALUATE_CASES])
def test_evaluate_rejects_bad_input_in_one_line(
    what: str, case: Case, names: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    suite = write_suite(tmp_path)
    out = tmp_path / "out"
    before = sorted(p.name for p in tmp_path.iterdir())
    extra = case(tmp_path, monkeypatch)
    made = sorted(p.name for p in tmp_path.iterdir())  # the case's own files (data, a read-only folder ...)
    argv = ["--suite", str(suite), "--out", str(out), "--no-plots", *extra]
    try:
        status = evaluate.main(argv)
    except SystemExit as e:  # argparse's usage errors exit (status 2) instead of returning
        status = e.code
    assert status == 2
    line = one_line(capsys.readouterr().err)
    _table_row(what, line)
    assert line.startswith("evaluate.py: error: "), line
    for name in names:
        assert name in line, (what, line)
    assert not out.exists(), f"{what}: the output folder was created"
    after = sorted(p.name for p in tmp_path.iterdir() if p.name != "cache")
    assert after == [n for n in made if n != "cache"], f"{what}: left {set(after) - set(made)} (had {before})"
    assert not list(tmp_path.rglob("records.jsonl")), f"{what}: a records file was left behind"


class SpacesEnv(gym.Env[np.ndarray, np.ndarray]):
    """Only the spaces of an LBW env with the given settings: enough to build (never train) an SB3 model."""

    def __init__(self, settings: Any) -> None:
        self.observation_space = settings.observation_space()
        self.action_space = settings.action_space()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        return self.observation_space.sample(), 0.0, False, False, {}


def test_a_learned_governor_trained_with_another_window_is_refused(tmp_path: Path, capsys: Any) -> None:
    """A real governor file (PPO, trained settings window 4) in an env with ``env.window=8``: refused before any
    run, naming the setting, where it used to fail mid-run with ``operands could not be broadcast``."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from lbw_env.control.compat import GovernanceSettings
    from lbw_env.evaluation import load_suite, prepare
    from lbw_env.learning.policy_file import save_policy_file
    from policies import make_governor

    suite = write_suite(tmp_path, env={**SUITE["env"], "window": 4})
    settings = GovernanceSettings.of(load_suite(suite).env_config())
    venv = DummyVecEnv([lambda: SpacesEnv(settings)])
    model = PPO("MlpPolicy", venv, n_steps=8, batch_size=8, seed=0, device="cpu", policy_kwargs={"net_arch": [8]})
    spec = f"ppo:{save_policy_file(model, tmp_path / 'governor', settings, algorithm='ppo')}"
    assert prepare(load_suite(suite, governors=[spec]), make_governor).tasks  # it fits the env it was trained for
    out = tmp_path / "out"
    assert evaluate.main(["--suite", str(suite), "--out", str(out), "env.window=8", "--governors", spec]) == 2
    line = one_line(capsys.readouterr().err)
    assert "window: trained with 4, this run has 8" in line and "ppo" in line, line
    assert not out.exists()


# ----------------------------------------------------------------------------------------------------------
# train_policy.py
# ----------------------------------------------------------------------------------------------------------


def train_config(tmp_path: Path, **changes: Any) -> Path:
    data: dict[str, Any] = {
        "env_id": "LBW/WikiText-Tiny-v0",
        "env": {"scenarios": ["tiny/ref"], "decision_interval": 4, "trainer_overrides": TINY},
        "algo": "ppo",
        "hyperparams": {"n_steps": 8, "batch_size": 8, "n_epochs": 1},
        "total_timesteps": 8,
        "n_envs": 1,
        "vec_env": "dummy",
        "eval": {"scenarios": ["tiny/ref"], "seeds": 1, "eval_freq": 0},
        "checkpoint_freq": 0,
        "progress_bar": False,
        "verbose": 0,
        "run_dir": str(tmp_path / "run"),
    }
    data.update(changes)
    path = tmp_path / "ppo.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


TRAIN_CASES: list[tuple[str, list[str], Callable[[Path, pytest.MonkeyPatch], None], list[str]]] = [
    ("unknown key", ["n_envz=1"], lambda tmp, mp: None, ["n_envz"]),
    ("non-finite clip_obs", ["normalize.clip_obs=.inf"], lambda tmp, mp: None, ["clip_obs", "finite"]),
    ("malformed YAML override", ["hyperparams={n_steps: 8"], lambda tmp, mp: None, ["not valid YAML"]),
    ("missing data root", [], lambda tmp, mp: mp.setenv("LBW_DATA_DIR", str(tmp / "nowhere")), ["nowhere"]),
    (
        "empty train file",
        [],
        lambda tmp, mp: mp.setenv("LBW_DATA_DIR", str(data_root(tmp, train=b""))),
        ["env.scenarios", "wiki.train.tokens", "no text"],
    ),
    ("NaN discount", ["hyperparams.gamma=.nan"], lambda tmp, mp: None, ["hyperparams.gamma", "(0, 1]"]),
    ("text entropy weight", ["hyperparams.ent_coef=abc"], lambda tmp, mp: None, ["hyperparams.ent_coef"]),
    ("negative layer width", ["hyperparams.policy_kwargs.net_arch=[-1]"], lambda tmp, mp: None, ["net_arch"]),
    ("image policy", ["policy=CnnPolicy"], lambda tmp, mp: None, ["policy", "MlpPolicy"]),
    ("another env's id", ["env_id=CartPole-v1"], lambda tmp, mp: None, ["env_id", "CartPole-v1"]),
    ("unknown device", ["device=tpu"], lambda tmp, mp: None, ["device", "tpu"]),
    ("bad residual base", ["residual.base=skip_step:abc"], lambda tmp, mp: None, ["residual.base", "skip_step"]),
    # Passes every config check, fails in SB3's constructor after the envs (and the run folder) were made.
    ("rejected by PPO", ["hyperparams.batch_size=1"], lambda tmp, mp: None, ["hyperparams", "PPO"]),
]


@pytest.mark.parametrize(("what", "overrides", "setup", "names"), TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_policy_rejects_bad_input_and_leaves_no_run_folder(
    what: str,
    overrides: list[str],
    setup: Callable[[Path, pytest.MonkeyPatch], None],
    names: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    config = train_config(tmp_path)
    setup(tmp_path, monkeypatch)
    assert train_policy.main(["--config", str(config), *overrides]) == 2
    line = one_line(capsys.readouterr().err)
    _table_row(what, line)
    assert line.startswith("train_policy.py: error: "), line
    for name in names:
        assert name in line, (what, line)
    assert not (tmp_path / "run").exists(), f"{what}: a run folder was left behind"
    assert not (tmp_path / "runs").exists()


def test_the_scripts_print_no_traceback(tmp_path: Path) -> None:
    """Both command lines and two benchmarks as a user runs them (subprocesses, started together: each spends its
    time importing torch): a missing data root is one line on stderr, exit 2, no output folder and no run folder.
    (The other benchmarks end the same way: the same two lines under ``__main__``, lbw_env.errors.)"""
    suite, config = write_suite(tmp_path), train_config(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", LBW_DATA_DIR=str(tmp_path / "nowhere"))
    commands = {
        "evaluate.py": ["--suite", str(suite), "--out", str(tmp_path / "out")],
        "train_policy.py": ["--config", str(config)],
        "benchmarks/overhead.py": ["--steps", "2"],
        "benchmarks/eval_noise.py": ["tiny/ref"],
    }
    procs = {
        script: subprocess.Popen(
            [sys.executable, str(REPO / script), *args], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
        )
        for script, args in commands.items()
    }
    for script, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, err
        line = one_line(err)
        assert line.startswith(f"{Path(script).name}: error: ") and "nowhere" in line, line
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()


def test_governor_fits_is_checked_for_every_arm() -> None:
    """The probe works on plain governors too: rule governors fit any envelope they were built for."""
    from lbw_env.env import EnvConfig
    from lbw_env.evaluation.suite import Arm, check_governor_fits
    from policies import make_governor

    for mode in ("continuous", "discrete"):
        for rollback in (False, True):
            env_cfg = EnvConfig(envelope=EnvelopeConfig(action_mode=mode, rollback_action=rollback), window=6)
            for name in ("adamw", "lbw_guard", "skip_step"):
                governor: Governor = make_governor(name, env_cfg.envelope)
                check_governor_fits(Arm(name, name), governor, env_cfg)


# ----------------------------------------------------------------------------------------------------------
# The Python API: rule arguments, residual bases, env construction and reset
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        ("skip_step:abc", ["skip_step:abc", "finite number >= 2 and <= 8"]),
        ("skip_step:-5", ["skip_step:-5", ">= 2"]),  # the envelope would clamp it to 2 sigma without a word
        ("skip_step:inf", ["skip_step:inf"]),
        ("ewm_skip:1", ["ewm_skip:1", "> 1"]),
        ("adamw:junk", ["adamw", "takes no argument"]),
        ("fixed_scale", ["fixed_scale:", "LR scale to hold", "got ''"]),  # no default oracle
        ("fixed_scale:0", ["fixed_scale:0", ">= 0.005 and <= 2"]),  # below the envelope's smallest scale
        ("fixed_scale_rollback:nan", ["fixed_scale_rollback:nan", "finite"]),
    ],
)
def test_rule_arguments_are_checked(spec: str, names: list[str]) -> None:
    from lbw_env.config import ConfigError
    from policies import make_governor

    with pytest.raises(ConfigError) as info:
        make_governor(spec)
    for name in names:
        assert name in str(info.value), str(info.value)
    assert make_governor("skip_step:3").gate == 3.0  # type: ignore[attr-defined]


def test_a_residual_base_must_be_a_rule_not_a_governor_file() -> None:
    """A learned base could name its own file: loading would recurse until the stack ran out."""
    from lbw_env.config import ConfigError
    from lbw_env.learning.residual import ResidualConfig, make_rules
    from policies import make_governor

    with pytest.raises(ConfigError, match=r"residual\.base: 'ppo:.*' is a learned governor; expected a rule"):
        make_rules(ResidualConfig(base="ppo:artifacts/ppo_residual/best_model"), EnvelopeConfig(), make_governor)


def test_env_construction_and_reset_reject_malformed_arguments_in_one_line() -> None:
    from lbw_env.config import ConfigError

    with pytest.raises(ConfigError, match=r"config: expected an EnvConfig or a mapping"):
        gym.make("LBW/WikiText-Tiny-v0", config=[1, 2])
    with pytest.raises(ConfigError, match=r"scale: expected a positive finite float, got inf"):
        gym.make("LBW/WikiText-Tiny-v0", reward={"scale": float("inf")})
    with pytest.raises(ConfigError, match=r"divergence_penalty: expected a finite float >= 0"):
        gym.make("LBW/WikiText-Tiny-v0", reward={"divergence_penalty": float("inf")})
    env = gym.make("LBW/WikiText-Tiny-v0", trainer_overrides=TINY)
    for options, match in [
        ({"scenario": 3}, r"options\.scenario: expected one scenario as a 'family/name' string, got 3"),
        ({"scenario": None}, r"options\.scenario: .* got None"),
        ({"scenario": "tiny:test"}, r"options\.scenario: .* got 'tiny:test'"),
        ("tiny/ref", r"reset options: expected a mapping"),
    ]:
        with pytest.raises(ValueError, match=match):
            env.reset(seed=0, options=options)  # type: ignore[arg-type]
    env.close()


@pytest.mark.parametrize(
    ("line", "names"),
    [
        ('{"scenario": "tiny/ref", "arm": "zzz", "seed": 0}', ["records.jsonl:1", "test_ppl"]),
        (
            '{"scenario": "tiny/ref", "arm": "adamw", "seed": 0.7, "test_ppl": 1, "final_valid_ppl": 1, '
            '"initial_test_ppl": 1}',
            ["records.jsonl:1", "seed", "0.7"],
        ),
    ],
)
def test_a_stored_record_that_cannot_be_reported_is_refused_on_resume(
    line: str, names: list[str], tmp_path: Path, capsys: Any
) -> None:
    """A stored record counts as done and is never rerun: one without its results, or whose seed is not an int
    (0.7 was read as seed 0), must stop the resume, not sit in the report as a blank or as another seed."""
    suite = write_suite(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "records.jsonl").write_text(line + "\n")
    assert evaluate.main(["--suite", str(suite), "--out", str(out), "--no-plots"]) == 2
    message = one_line(capsys.readouterr().err)
    for name in names:
        assert name in message, message
    assert (out / "records.jsonl").read_text() == line + "\n"  # nothing already there is lost
