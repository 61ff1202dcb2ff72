"""lbw_env.learning and its command line train_policy.py: a short PPO run end to end, its run folder,
evaluation of the saved model, kill + resume, bad input, run-folder naming, and rl-zoo3 compatibility of the
shipped hyperparameters.

Runs use the tiny family cut to 16 optimizer steps per episode (4 decisions of 4 steps), tiny evaluation
subsets and an 8-step base checkpoint for the fine-tune scenarios, so that a whole training run with
evaluations and checkpoints takes seconds on two cores.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import evaluate
import train_policy
from lbw_env import learning
from lbw_env.config import ConfigError, to_dict
from lbw_env.learning.artifacts import VECNORM_FILE, own_vecnormalize, replay_buffer_path, vecnormalize_path
from lbw_env.learning.callbacks import replaces_best
from lbw_env.scenarios import resolve
from policies import make_governor

REPO = Path(__file__).resolve().parents[1]
TINY = ["optim.steps=16", "base_steps=8", "data.eval_blocks=4"]
"""Trainer overrides of every run here: 16-step episodes, cheap validation, an 8-step base checkpoint."""
ENV = {"decision_interval": 4, "trainer_overrides": TINY}
"""4 decisions per episode. A learned governor must be evaluated with the env settings it was trained with."""


def small_config(run_dir: Path, **changes: Any) -> dict[str, Any]:
    """A PPO config that trains 48 decisions with evaluations and checkpoints every 16."""
    data: dict[str, Any] = {
        "env_id": "LBW/WikiText-Tiny-v0",
        "env": dict(ENV),
        "algo": "ppo",
        "hyperparams": {"n_steps": 8, "batch_size": 16, "n_epochs": 2, "policy_kwargs": {"net_arch": [16, 16]}},
        "total_timesteps": 48,
        "n_envs": 2,
        "vec_env": "dummy",
        "eval": {"scenarios": ["tiny:val"], "seeds": 1, "eval_freq": 16},
        "checkpoint_freq": 16,
        "progress_bar": False,
        "verbose": 0,
        "run_dir": str(run_dir),
    }
    data.update(changes)
    return data


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def tb_scalars(run_tb: Path) -> dict[str, list[int]]:
    """TensorBoard scalar tag -> steps, over every event file of one run folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[int]] = {}
    for events in sorted(run_tb.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend(e.step for e in acc.Scalars(tag))
    return out


def monitor_rows(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines()[2:] if line.strip()]


@pytest.fixture(scope="module")
def trained(lbw: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short PPO run through the command line's ``main`` (in this process); returns its run folder."""
    tmp = tmp_path_factory.mktemp("train")
    config = write_config(tmp / "ppo.yaml", small_config(tmp / "run"))
    assert train_policy.main(["--config", str(config)]) == 0
    return tmp / "run"


# ----------------------------------------------------------------------------------------------------------
# A whole run
# ----------------------------------------------------------------------------------------------------------


def test_run_folder_holds_config_models_statistics_logs_and_curve(trained: Path) -> None:
    run = trained
    for name in (
        "config.yaml",
        "env.yaml",
        "best_model.zip",
        "vecnormalize.pkl",
        "final/model.zip",
        "final/vecnormalize.pkl",
        "best_model/manifest.json",  # governor files (no pickle) beside SB3's zips
        "best_model/policy.safetensors",
        "best_model/vecnormalize.json",
        "final/model/manifest.json",
        "evaluations.npz",
        "learning_curve.png",
        "summary.json",
        "monitor/0.monitor.csv",
        "monitor/1.monitor.csv",
        "monitor/eval.monitor.csv",
        "checkpoints/model_16_steps.zip",
        "checkpoints/model_vecnormalize_16_steps.pkl",
        "checkpoints/model_48_steps.zip",
    ):
        assert (run / name).is_file(), f"{name} missing from the run folder"
    # The saved config is the resolved one, and loads again.
    cfg = learning.load_config(run / "config.yaml")
    assert cfg.algo == "ppo" and cfg.total_timesteps == 48 and cfg.env == ENV
    summary = json.loads((run / "summary.json").read_text())
    assert summary["num_timesteps"] == 48 and summary["best_model"].endswith("best_model.zip")
    # Evaluations on the fixed held-out episodes: 2 scenarios x 1 seed, at 16, 32, 48 timesteps.
    evals = np.load(run / "evaluations.npz")
    assert evals["timesteps"].tolist() == [16, 32, 48]
    assert evals["results"].shape == (3, 2) and np.isfinite(evals["results"]).all()
    env_yaml = yaml.safe_load((run / "env.yaml").read_text())
    assert env_yaml["eval_episodes"] == [["tiny/high_lr", 10_000], ["tiny/ft_high_lr", 10_000]]
    assert env_yaml["train"]["trainer_overrides"][-1] == "runtime.threads=1"  # threads reach every env process
    # Training statistics are saved for the eval-time normalisation (norm_reward only during training).
    with open(run / "vecnormalize.pkl", "rb") as f:
        vn = pickle.load(f)
    assert vn.norm_obs and vn.obs_rms.count > 1
    # Training episodes: 48 decisions / 4 per episode / 2 envs = 6 per env.
    assert len(monitor_rows(run / "monitor" / "0.monitor.csv")) == 6


def test_tensorboard_metrics_are_grouped(trained: Path) -> None:
    pytest.importorskip("tensorboard")
    runs = sorted((trained / "tb").iterdir())
    assert [p.name for p in runs] == ["PPO_1"]
    tags = set(tb_scalars(runs[0]))
    for tag in (
        "train/value_loss",
        "eval/mean_reward",
        "eval/final_valid_ppl",
        "telemetry/loss",
        "telemetry/lr_scale",
        "telemetry/skip_rate",
        "telemetry/final_valid_ppl",
        "governor/action_0",
        "governor/action_1",
        "governor/rollbacks",
        "governor/interventions/action_clipped",
        "reward/progress",
        "reward/final_correction",
        "reward/return",
    ):
        assert tag in tags, f"{tag} not logged; got {sorted(tags)}"


def test_saved_model_is_a_governor_for_evaluate_py(trained: Path, tmp_path: Path) -> None:
    best = make_governor(f"ppo:{trained / 'best_model'}")  # the governor file: no pickle, settings included
    assert best.obs_rms is not None  # type: ignore[attr-defined]  # its vecnormalize.json
    assert best.settings.decision_interval == ENV["decision_interval"]  # type: ignore[attr-defined]
    # It is the model of best_model.zip (+ vecnormalize.pkl), which only loads when trusted.
    legacy = make_governor(f"ppo:{trained / 'best_model.zip'}", trust_pickle=True)
    obs = np.random.default_rng(0).uniform(-5, 5, (8, *best.observation_space.shape)).astype(np.float32)  # type: ignore[attr-defined]
    assert np.array_equal(best.predict(obs, deterministic=True)[0], legacy.predict(obs, deterministic=True)[0])
    checkpoint = make_governor(f"ppo:{trained / 'checkpoints' / 'model_16_steps.zip'}", trust_pickle=True)
    with open(trained / "checkpoints" / "model_vecnormalize_16_steps.pkl", "rb") as f:
        own = pickle.load(f).obs_rms
    assert np.array_equal(checkpoint.obs_rms.mean, own.mean)  # type: ignore[attr-defined]  # its own statistics

    suite = {
        "name": "learned_test",
        "scenarios": ["tiny:val"],
        "arms": [{"label": "ppo", "governor": f"ppo:{trained / 'best_model'}"}, "adamw"],
        "seeds": 1,
        "env": dict(ENV),  # the settings the model was trained with
    }
    path = write_config(tmp_path / "learned.yaml", suite)
    out = tmp_path / "results"
    assert evaluate.main(["--suite", str(path), "--out", str(out), "--no-plots"]) == 0
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    learned = [r for r in records if r["arm"] == "ppo"]
    assert {r["scenario"] for r in learned} == {"tiny/high_lr", "tiny/ft_high_lr"}
    assert all(r["governor_class"] == "SB3Governor" and r["decisions"] == 4 for r in learned)
    assert (out / "report.md").is_file()


# ----------------------------------------------------------------------------------------------------------
# Kill and resume
# ----------------------------------------------------------------------------------------------------------


def test_sigkill_then_resume_continues_steps_logs_and_monitor(lbw: None, tmp_path: Path) -> None:
    run = tmp_path / "run"
    # Subprocess envs, as in real training; long enough that it is still running when killed.
    config = write_config(
        tmp_path / "ppo.yaml",
        small_config(run, total_timesteps=4000, vec_env="subproc", eval={"seeds": 1, "eval_freq": 0}),
    )
    cmd = [sys.executable, str(REPO / "train_policy.py"), "--config", str(config)]
    first = run / "checkpoints" / "model_16_steps.zip"  # written last (atomically): the checkpoint is complete
    with open(tmp_path / "first.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            while not first.is_file() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert proc.poll() is None, (
                "training ended before it could be killed:\n" + (tmp_path / "first.log").read_text()
            )
            assert first.is_file(), "no checkpoint in time:\n" + (tmp_path / "first.log").read_text()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its env workers, as a crash would
            proc.wait()
    checkpoints = sorted(run.glob("checkpoints/model_*_steps.zip"), key=lambda p: int(p.stem.split("_")[1]))
    checkpoint = checkpoints[-1]
    steps = int(checkpoint.stem.split("_")[1])
    # Statistics are written (atomically) before their model: the newest model's are complete, whenever the kill.
    assert (run / "checkpoints" / f"model_vecnormalize_{steps}_steps.pkl").is_file()
    monitor_before = monitor_rows(run / "monitor" / "0.monitor.csv")

    # Resume in this process, with the run's own config.yaml and a budget of 32 more decisions.
    argv = ["--trust-pickle", f"resume={checkpoint}", f"total_timesteps={steps + 32}", "vec_env=dummy"]
    assert train_policy.main(argv) == 0  # our own checkpoint: SB3 reads it with pickle, so we vouch for it

    summary = json.loads((run / "summary.json").read_text())
    assert summary["num_timesteps"] == steps + 32 > steps
    assert summary["segment_timesteps"] == 32
    from stable_baselines3 import PPO

    assert PPO.load(run / "final" / "model.zip", device="cpu").num_timesteps == steps + 32
    assert (run / "checkpoints" / f"model_{steps + 16}_steps.zip").is_file()
    # The monitor files continue (appended, earlier episodes untouched).
    monitor_after = monitor_rows(run / "monitor" / "0.monitor.csv")
    assert monitor_after[: len(monitor_before)] == monitor_before
    assert len(monitor_after) > len(monitor_before)
    if importlib.util.find_spec("tensorboard") is not None:
        # One TensorBoard run, written by both segments, its steps continuing past the checkpoint.
        assert [p.name for p in (run / "tb").iterdir()] == ["PPO_1"]
        assert len(list((run / "tb" / "PPO_1").glob("events.out.tfevents.*"))) == 2
        logged = tb_scalars(run / "tb" / "PPO_1")
        assert max(logged["telemetry/loss"]) > steps


def test_the_paired_rule_replaces_the_best_only_beyond_the_episodes_noise() -> None:
    best = [1.0, 2.0, 3.0, 4.0]
    steady = [b + d for b, d in zip(best, [0.10, 0.12, 0.09, 0.11])]
    lucky = [b + d for b, d in zip(best, [0.30, -0.20, 0.25, -0.10])]  # a higher mean, by chance
    assert replaces_best(steady, best, "paired") and replaces_best(steady, best, "mean")
    assert replaces_best(lucky, best, "mean") and not replaces_best(lucky, best, "paired")
    assert replaces_best([b + 0.1 for b in best], best, "paired")  # no spread: every pair better
    assert not replaces_best([b - 0.1 for b in best], best, "paired")
    assert replaces_best(best, None, "paired") and not replaces_best([1.0, math.nan], None, "paired")


def replayed_best(evaluations: Path, rule: str) -> tuple[int, list[float]]:
    """The step and per-episode rewards of the evaluation ``rule`` makes the best, replayed over evaluations.npz."""
    data = np.load(evaluations)
    chosen: tuple[int, list[float]] | None = None
    for t, results in zip(data["timesteps"], data["results"]):
        if replaces_best(list(results), chosen[1] if chosen else None, rule):
            chosen = (int(t), list(results))
    assert chosen is not None
    return chosen


@pytest.mark.parametrize("run", ["ppo_residual_probe", "ppo_residual_wide"])
def test_the_paired_rule_would_have_kept_the_shipped_residuals_base(run: str) -> None:
    """docs/learned_governors.md: of the shipped runs that scored their base first (``at_start``), SB3's rule chose
    the 4,096-decision checkpoint by a higher mean over 14 val episodes, which ended no better than the base on
    the tiny test split; the paired rule, replayed on the same evaluations, keeps the base."""
    evaluations = REPO / "artifacts" / run / "evaluations.npz"
    chosen = {rule: replayed_best(evaluations, rule)[0] for rule in ("mean", "paired")}
    assert chosen == {"mean": 4096, "paired": 0}


def test_paired_selection_keeps_the_start_unless_beaten(lbw: None, tmp_path: Path) -> None:
    """``eval.select: paired`` with ``at_start``: best_model is the evaluation the paired rule chose, replayed
    from evaluations.npz, and the saved model is the one of that evaluation's step."""
    run = tmp_path / "run"
    evaluation = {"scenarios": ["tiny:val"], "seeds": 2, "eval_freq": 16, "at_start": True, "select": "paired"}
    config = write_config(tmp_path / "ppo.yaml", small_config(run, eval=evaluation, checkpoint_freq=0))
    assert train_policy.main(["--config", str(config)]) == 0
    data = np.load(run / "evaluations.npz")
    assert data["timesteps"][0] == 0 and data["results"].shape[1] == 4
    chosen = replayed_best(run / "evaluations.npz", "paired")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_eval_mean_reward"] == pytest.approx(float(np.mean(chosen[1])))
    from stable_baselines3 import PPO

    assert PPO.load(run / "best_model.zip", device="cpu").num_timesteps == chosen[0]


# ----------------------------------------------------------------------------------------------------------
# Bad input fails clearly, before anything is created
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algo=dqn"], "algo: expected one of"),
        (["algo=sac", "env.envelope.action_mode=discrete"], "sac needs continuous actions"),
        (["bogus=1"], "bogus: unknown key for TrainConfig"),
        (["env.bogus=1"], "env.bogus: unknown key for EnvConfig"),
        (["hyperparams.n_stepz=8"], "hyperparams.n_stepz: not an argument of PPO"),
        (["hyperparams.seed=3"], "hyperparams.seed: set by the training config"),
        (["hyperparams.policy_kwargs.activation_fn=swish"], "activation_fn: expected one of"),
        (["eval.scenarios=[tiny/missing]"], "tiny/missing"),
        (["env_id=LBW/Nope-v0"], "env_id: 'LBW/Nope-v0' is not an lbw_env id"),
        (["n_envs=0"], "n_envs: expected an int >= 1"),
        (["eval.scenarios=[tiny:test]"], "eval.scenarios: a learned governor's training or model selection"),
        (["env.scenarios=[tiny/high_lr20]"], "test split is for reporting only"),
        (["eval.scenarios=[tiny:heldout]"], "'heldout' was retired: use 'val'"),
        (["resume=nowhere/model_8_steps.zip"], "checkpoint nowhere/model_8_steps.zip not found"),
        (["eval.select=median"], "eval.select: expected one of mean, paired"),
    ],
)
def test_bad_input_fails_clearly(
    lbw: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], overrides: list[str], message: str
) -> None:
    run = tmp_path / "run"
    config = write_config(tmp_path / "ppo.yaml", small_config(run))
    assert train_policy.main(["--config", str(config), *overrides]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not run.exists(), "the run folder was created before the config was rejected"


def test_resume_of_a_checkpoint_needs_trust_pickle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SB3 reads a checkpoint (and its .pkl files) with pickle, which runs any code they hold: ``resume=`` of an
    existing checkpoint is refused without ``--trust-pickle``, in one line, before anything is read or created."""
    run = tmp_path / "run"
    checkpoint = run / "checkpoints" / "model_8_steps.zip"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"never unpickled")
    config = write_config(tmp_path / "ppo.yaml", small_config(run))
    assert train_policy.main(["--config", str(config), f"resume={checkpoint}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("train_policy.py: error: resume=") and "--trust-pickle" in err and "pickle" in err, err
    assert [p.name for p in run.rglob("*")] == ["checkpoints", "model_8_steps.zip"]
    with pytest.raises(SystemExit):
        train_policy.parse_args(["--help"])
    assert "DANGEROUS" in capsys.readouterr().out


def test_env_config_keeps_the_registered_pool_unless_overridden(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", small_config(tmp_path / "run", env_id="LBW/WikiText-LRStress-v0"))
    cfg = learning.load_config(path)
    assert cfg.env_config().scenarios == ["lr_stress:train"]
    assert cfg.env_config().decision_interval == 4  # ... with the config's env keys merged over it
    cfg = learning.load_config(path, ["env.scenarios=[lr_stress/ref]"])
    assert cfg.env_config().scenarios == ["lr_stress/ref"]


def test_config_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ppo\.yaml: algo"):
        learning.load_config(write_config(tmp_path / "ppo.yaml", {"algo": "nope"}))
    with pytest.raises(ConfigError, match="--config: required"):
        learning.load_config(None)
    for path in sorted((REPO / "configs" / "train").glob("*.yaml")):  # every shipped config is valid
        if path.stem == "recurrent_ppo" and importlib.util.find_spec("sb3_contrib") is None:
            continue  # optional dependency
        learning.load_config(path)


def test_learned_suite_evaluates_the_artifact_with_its_training_env() -> None:
    from lbw_env.evaluation import load_suite

    train = learning.load_config(REPO / "configs" / "train" / "ppo_tiny_artifact.yaml")
    suite = load_suite(REPO / "configs" / "suites" / "learned.yaml")
    arms = {a.label: a.governor for a in suite.arms}
    assert arms["ppo"] == f"ppo:{train.run_dir}/best_model"
    assert {"adamw", "lbw_guard"} <= set(arms) and suite.seeds == 5
    # Same decision interval, window, envelope, reward and trainer overrides as in training (threads aside).
    trained_env = to_dict(train.env_config(suite.scenarios))
    suite_env = to_dict(suite.env_config([f"runtime.threads={train.threads}"]))
    assert suite_env == trained_env
    # Reported on test scenarios that neither training nor model selection saw.
    reported = {s.name for s in resolve(suite.scenarios) if s.name != "tiny/ref"}
    assert reported and all(s.split == "test" for s in resolve(sorted(reported)))
    assert not reported & {s.name for s in resolve(train.eval.scenarios)}
    assert not reported & {s.name for s in resolve(train.env_config().scenarios)}


@pytest.mark.parametrize(
    ("key", "specs"),
    [
        ("env.scenarios", ["tiny:test"]),
        ("env.scenarios", ["tiny:train", "tiny/shock100"]),
        ("eval.scenarios", ["tiny:test"]),
        ("eval.scenarios", ["tiny:val", "tiny/ft_lr3e-1_b1"]),
    ],
)
def test_training_and_selection_refuse_test_scenarios(tmp_path: Path, key: str, specs: list[str]) -> None:
    """The test split is for reporting only: TrainConfig validation refuses it in either pool."""
    path = write_config(tmp_path / "c.yaml", small_config(tmp_path / "run"))
    learning.load_config(path)  # the train pool and tiny:val selection are fine
    with pytest.raises(ConfigError, match=rf"{key}: .*test split is for reporting only"):
        learning.load_config(path, [f"{key}=[{', '.join(specs)}]"])


def test_help_config_lists_every_key_without_training() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "train_policy.py"), "--help-config"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    for key in ("env_id", "hyperparams", "normalize.clip_obs", "eval.seed_offset", "max_minutes", "resume"):
        assert f"  {key} " in done.stdout, done.stdout


# ----------------------------------------------------------------------------------------------------------
# Run folder naming: one rule for the trainer (resume) and for governors loaded from a .zip
# ----------------------------------------------------------------------------------------------------------


def test_models_find_their_own_vecnormalize_statistics(tmp_path: Path) -> None:
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    checkpoint = checkpoints / "model_16_steps.zip"
    assert own_vecnormalize(checkpoint) == checkpoints / "model_vecnormalize_16_steps.pkl"
    assert replay_buffer_path(checkpoint) == checkpoints / "model_replay_buffer_16_steps.pkl"
    assert replay_buffer_path(tmp_path / "run" / "best_model.zip") is None
    assert vecnormalize_path(checkpoint) is None  # nothing saved yet
    (checkpoints / VECNORM_FILE).touch()  # a stray file beside it is the fallback ...
    assert vecnormalize_path(checkpoint) == checkpoints / VECNORM_FILE
    own_vecnormalize(checkpoint).touch()  # ... but a checkpoint's own statistics win
    assert vecnormalize_path(checkpoint) == checkpoints / "model_vecnormalize_16_steps.pkl"
    # best_model.zip: the statistics beside it; an rl-zoo3 model <log>/<env>.zip: <log>/<env>/vecnormalize.pkl.
    best = tmp_path / "run" / "best_model.zip"
    (tmp_path / "run" / VECNORM_FILE).touch()
    assert vecnormalize_path(best) == own_vecnormalize(best) == tmp_path / "run" / VECNORM_FILE
    zoo = tmp_path / "zoo" / "LBW-WikiText-Tiny-v0.zip"
    (zoo.parent / zoo.stem).mkdir(parents=True)
    (zoo.parent / zoo.stem / VECNORM_FILE).touch()
    assert vecnormalize_path(zoo) == zoo.parent / zoo.stem / VECNORM_FILE


# ----------------------------------------------------------------------------------------------------------
# rl-baselines3-zoo
# ----------------------------------------------------------------------------------------------------------


def test_rl_zoo3_trains_with_the_shipped_hyperparameters(lbw: None, tmp_path: Path) -> None:
    pytest.importorskip("rl_zoo3")
    cmd = [
        sys.executable, "-m", "rl_zoo3.train", "--algo", "ppo", "--env", "LBW/WikiText-Tiny-v0",
        "--gym-packages", "lbw_env", "--conf-file", str(REPO / "configs" / "rl_zoo3" / "ppo.yml"),
        "-n", "16", "-f", str(tmp_path / "logs"), "--num-threads", "1",
        # Smaller than the shipped run; everything else (normalisation, policy, env id) as shipped.
        "--hyperparams", "n_envs:1", "n_steps:8", "batch_size:8", "n_epochs:1",
        "--env-kwargs", "decision_interval:4", f"trainer_overrides:{[*TINY, 'runtime.threads=1']!r}",
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    saved = tmp_path / "logs" / "ppo" / "LBW-WikiText-Tiny-v0_1"
    assert (saved / "LBW-WikiText-Tiny-v0" / "vecnormalize.pkl").is_file()
    # The zoo's model is a governor too, normalised with the zoo's statistics.
    governor = make_governor(f"ppo:{saved / 'LBW-WikiText-Tiny-v0.zip'}", trust_pickle=True)
    assert governor.obs_rms is not None  # type: ignore[attr-defined]
