"""Governor files: loading runs no code from the file, converts legacy SB3 models exactly, and a learned
governor carries the settings it was trained with.

No plant runs here: the models are fresh SB3 models on the env's own observation and action spaces (a stub env
with those spaces), with non-trivial VecNormalize statistics, so every test takes well under a second of CPU
after SB3 is imported. The attacks are real: the crafted files create a marker file when unpickled, and each
test that shows a refusal also shows (with ``trust_pickle=True``) that the payload would have run.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from stable_baselines3 import A2C, PPO, SAC
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

import evaluate
from lbw_env.config import ConfigError, to_dict
from lbw_env.control.compat import GovernanceSettings, check_compatible, check_settings
from lbw_env.control.envelope import EnvelopeConfig
from lbw_env.control.governance import GovernanceConfig
from lbw_env.evaluation import load_suite, run_suite
from lbw_env.integrations.loop import GovernedLoop
from lbw_env.learning import convert
from lbw_env.learning.artifacts import checkpoint_timesteps
from lbw_env.learning.policy_file import MANIFEST, MEMBERS, NORMALIZER, WEIGHTS, load_policy_file, save_policy_file
from policies import make_governor, make_trusted_governor
from policies.sb3 import SB3Governor

REPO = Path(__file__).resolve().parents[1]
SETTINGS = GovernanceSettings(decision_interval=8, window=4, envelope=EnvelopeConfig(rollback_action=True))
ALGOS = {"ppo": PPO, "a2c": A2C, "sac": SAC}


class SpacesEnv(gym.Env[np.ndarray, np.ndarray]):
    """The LBW env's spaces for the given settings, and nothing behind them (models are never trained here)."""

    def __init__(self, settings: GovernanceSettings) -> None:
        self.observation_space = settings.observation_space()
        self.action_space = settings.action_space()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        return self.observation_space.sample(), 0.0, False, False, {}


def make_model(algo: str = "ppo", settings: GovernanceSettings = SETTINGS, **kwargs: Any) -> Any:
    """A fresh model under VecNormalize whose statistics are far from identity (so normalising matters)."""
    venv = VecNormalize(DummyVecEnv([lambda: SpacesEnv(settings)]), norm_obs=True, norm_reward=True)
    rng = np.random.default_rng(0)
    size = venv.observation_space.shape[0]
    venv.obs_rms.mean = rng.normal(0.0, 1.0, size)
    venv.obs_rms.var = rng.uniform(0.2, 3.0, size)
    venv.obs_rms.count = 123.0
    extra = {"buffer_size": 64, "learning_starts": 0} if algo == "sac" else {}
    if algo == "recurrent_ppo":
        from sb3_contrib import RecurrentPPO

        policy_kwargs = {"net_arch": [16], "lstm_hidden_size": 8}
        return RecurrentPPO("MlpLstmPolicy", venv, seed=0, device="cpu", policy_kwargs=policy_kwargs, **kwargs)
    policy_kwargs = {"net_arch": [16, 16], "activation_fn": torch.nn.ReLU}
    return ALGOS[algo]("MlpPolicy", venv, seed=0, device="cpu", policy_kwargs=policy_kwargs, **extra, **kwargs)


def observations(settings: GovernanceSettings = SETTINGS, n: int = 16) -> list[np.ndarray]:
    space = settings.observation_space()
    space.seed(1)
    return [space.sample() for _ in range(n)]


def reference_actions(model: Any, obs: list[np.ndarray]) -> list[np.ndarray]:
    """What SB3 itself answers: ``model.predict`` on observations normalised by the model's VecNormalize."""
    vn = model.get_vec_normalize_env()
    return [model.predict(vn.normalize_obs(o[None]).astype(np.float32), deterministic=True)[0][0] for o in obs]


def governor_actions(governor: Any, obs: list[np.ndarray]) -> list[np.ndarray]:
    return [governor.predict(o, deterministic=True)[0] for o in obs]


def legacy_run(tmp_path: Path, model: Any, settings: GovernanceSettings = SETTINGS) -> Path:
    """A run folder as train_policy.py left it before governor files: best_model.zip, vecnormalize.pkl, env.yaml."""
    run = tmp_path / "run"
    run.mkdir(parents=True, exist_ok=True)
    model.save(run / "best_model.zip")
    model.get_vec_normalize_env().save(str(run / "vecnormalize.pkl"))
    config = settings.adopt(GovernanceConfig())
    (run / "env.yaml").write_text(yaml.safe_dump({"train": to_dict(config), "eval_episodes": []}))
    return run / "best_model.zip"


class Payload:
    """Unpickling this runs ``exec(code)``: the shape of any pickle-borne attack."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return exec, (self.code,)


def touch_payload(marker: Path) -> bytes:
    return pickle.dumps(Payload(f"open({str(marker)!r}, 'w').close()"))


def poison_zip(src: Path, dst: Path, payload: bytes) -> None:
    """``dst``: the SB3 zip ``src`` with a ``:serialized:`` field replaced by ``payload`` (SB3 unpickles it)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename == "data":
                fields = json.loads(data)
                fields["observation_space"][":serialized:"] = base64.b64encode(payload).decode()
                data = json.dumps(fields).encode()
            zout.writestr(item, data)


# ----------------------------------------------------------------------------------------------------------
# The format: exact round trips
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algo", "mode"), [("ppo", "continuous"), ("ppo", "discrete"), ("a2c", "continuous"), ("sac", "continuous")]
)
def test_governor_file_acts_exactly_as_the_sb3_model(tmp_path: Path, algo: str, mode: str) -> None:
    settings = GovernanceSettings(8, 4, EnvelopeConfig(action_mode=mode, rollback_action=True))
    model = make_model(algo, settings)
    folder = save_policy_file(
        model, tmp_path / "gov", settings, algorithm=algo, vecnormalize=model.get_vec_normalize_env()
    )
    assert sorted(p.name for p in folder.iterdir()) == sorted(MEMBERS)
    governor = make_governor(f"{algo}:{folder}")
    assert isinstance(governor, SB3Governor) and governor.settings == settings
    obs = observations(settings)
    for got, want in zip(governor_actions(governor, obs), reference_actions(model, obs)):
        assert np.array_equal(got, want)
    # The manifest is the file's description: plain JSON naming classes, spaces and settings.
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["algorithm"] == algo and manifest["policy_kwargs"]["activation_fn"] == {":class:": "ReLU"}
    assert manifest["settings"]["window"] == 4 and manifest["settings"]["envelope"]["action_mode"] == mode
    assert manifest["normalizer"] == {"type": "VecNormalize", "file": NORMALIZER}
    # The manifest file itself can be named, and so can a single governor zip.
    assert make_governor(f"{algo}:{folder / MANIFEST}").settings == settings  # type: ignore[attr-defined]
    single = save_policy_file(
        model, tmp_path / "gov.zip", settings, algorithm=algo, vecnormalize=model.get_vec_normalize_env()
    )
    with zipfile.ZipFile(single) as zf:
        assert sorted(zf.namelist()) == sorted(MEMBERS)
    assert np.array_equal(governor_actions(make_governor(f"{algo}:{single}"), obs), governor_actions(governor, obs))


def test_recurrent_ppo_carries_its_lstm_state_as_sb3_predict_does(tmp_path: Path) -> None:
    pytest.importorskip("sb3_contrib")
    model = make_model("recurrent_ppo")
    folder = save_policy_file(
        model, tmp_path / "gov", SETTINGS, algorithm="recurrent_ppo", vecnormalize=model.get_vec_normalize_env()
    )
    governor = make_governor(f"recurrent_ppo:{folder}")
    vn = model.get_vec_normalize_env()
    ours = theirs = None
    for i, obs in enumerate(observations(n=12)):
        start = np.array([i in (0, 6)])  # a new episode at 0 and 6: the state resets there
        a, ours = governor.predict(obs[None], state=ours, episode_start=start, deterministic=True)
        b, theirs = model.predict(vn.normalize_obs(obs[None]).astype(np.float32), theirs, start, deterministic=True)
        assert np.array_equal(a, b)
        assert ours is not None and theirs is not None
        assert all(np.array_equal(x, y) for x, y in zip(ours, theirs))
    with pytest.raises(ConfigError, match=r"a recurrent_ppo governor; load it as recurrent_ppo:"):
        make_governor(f"ppo:{folder}")


def test_loading_leaves_the_global_random_stream_alone(tmp_path: Path) -> None:
    model = make_model()
    folder = save_policy_file(
        model, tmp_path / "gov", SETTINGS, algorithm="ppo", vecnormalize=model.get_vec_normalize_env()
    )
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    make_governor(f"ppo:{folder}")
    assert torch.equal(torch.rand(3), expected)


def test_saving_is_atomic_and_never_overwrites_a_foreign_folder(tmp_path: Path) -> None:
    model = make_model()
    vn = model.get_vec_normalize_env()
    folder = save_policy_file(model, tmp_path / "gov", SETTINGS, algorithm="ppo", vecnormalize=vn)
    save_policy_file(model, folder, SETTINGS, algorithm="ppo", vecnormalize=None)  # a governor folder: replaced
    assert not (folder / NORMALIZER).exists() and make_governor(f"ppo:{folder}").obs_rms is None  # type: ignore[attr-defined]
    assert [p.name for p in tmp_path.iterdir()] == ["gov"]  # no temporary folders left behind
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a governor folder"):
        save_policy_file(model, other, SETTINGS, algorithm="ppo")
    # Settings that do not describe the model's spaces are refused: a file cannot claim another behaviour.
    with pytest.raises(ConfigError, match="observation space does not match"):
        save_policy_file(model, tmp_path / "x", GovernanceSettings(8, 5, SETTINGS.envelope), algorithm="ppo")
    with pytest.raises(ConfigError, match="action space does not match"):
        save_policy_file(
            model, tmp_path / "x", GovernanceSettings(8, 4, EnvelopeConfig(rollback_action=False)), algorithm="ppo"
        )


# ----------------------------------------------------------------------------------------------------------
# Legacy SB3 files: opt-in, and converted exactly
# ----------------------------------------------------------------------------------------------------------


def test_sb3_zip_needs_trust_and_converts_to_identical_actions(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = make_model()
    zip_path = legacy_run(tmp_path, model)
    with pytest.raises(ConfigError) as refused:
        make_governor(f"ppo:{zip_path}")
    message = str(refused.value)
    assert "\n" not in message and "pickle" in message
    assert "--trust-pickle" in message and "trust_pickle=True" in message and "lbw_env.learning.convert" in message
    trusted = make_governor(f"ppo:{zip_path}", trust_pickle=True)
    assert trusted.settings == SETTINGS  # type: ignore[attr-defined]  # from the run folder's env.yaml
    assert make_trusted_governor(f"ppo:{zip_path}").settings == SETTINGS  # type: ignore[attr-defined]

    assert convert.main([str(zip_path)]) == 2  # the converter reads pickle too: same opt-in
    assert "--trust-pickle" in capsys.readouterr().err
    assert convert.main([str(zip_path), "--trust-pickle"]) == 0
    folder = zip_path.with_suffix("")
    converted = make_governor(f"ppo:{folder}")
    obs = observations()
    want = reference_actions(model, obs)
    assert all(np.array_equal(a, b) for a, b in zip(governor_actions(trusted, obs), want))
    assert all(np.array_equal(a, b) for a, b in zip(governor_actions(converted, obs), want))
    assert converted.settings == SETTINGS  # type: ignore[attr-defined]
    # Now that a safe copy exists, the refusal points at it.
    with pytest.raises(ConfigError, match=rf"a safe copy exists: ppo:{folder}"):
        make_governor(f"ppo:{zip_path}")


def test_a_run_folder_whose_settings_contradict_the_model_is_refused(tmp_path: Path) -> None:
    zip_path = legacy_run(tmp_path, make_model(), GovernanceSettings(8, 5, SETTINGS.envelope))  # window 5 != 4
    with pytest.raises(ConfigError, match=r"env\.yaml: observation space does not match"):
        make_governor(f"ppo:{zip_path}", trust_pickle=True)


def test_conversion_without_settings_asks_for_them(tmp_path: Path) -> None:
    model = make_model()
    zip_path = tmp_path / "model.zip"
    model.save(zip_path)
    with pytest.raises(ConfigError, match="--env-yaml"):
        convert.convert(zip_path, trust_pickle=True)
    env_yaml = tmp_path / "governance.yaml"
    env_yaml.write_text(yaml.safe_dump(to_dict(SETTINGS.config())))
    assert (
        convert.main([str(zip_path), "--trust-pickle", "--env-yaml", str(env_yaml), "--out", str(tmp_path / "g.zip")])
        == 0
    )
    assert make_governor(f"ppo:{tmp_path / 'g.zip'}").obs_rms is None  # type: ignore[attr-defined]  # no .pkl here


# ----------------------------------------------------------------------------------------------------------
# Crafted files
# ----------------------------------------------------------------------------------------------------------


def test_crafted_sb3_zip_is_refused_before_it_can_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    clean = tmp_path / "clean.zip"
    make_model().save(clean)
    evil = tmp_path / "evil" / "best_model.zip"
    evil.parent.mkdir()
    poison_zip(clean, evil, touch_payload(marker))
    spec = f"ppo:{evil}"
    with pytest.raises(ConfigError, match="--trust-pickle"):
        make_governor(spec)
    # ... and through the engine's paths, which build governors with the same factory.
    suite = {"name": "evil", "scenarios": ["tiny/ref"], "arms": [spec], "seeds": 1}
    with pytest.raises(ConfigError, match="--trust-pickle"):
        run_suite(load_suite(suite), tmp_path / "out", make_governor=make_governor)
    optimizer = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters())
    with pytest.raises(ConfigError, match="--trust-pickle"):
        GovernedLoop(optimizer, spec, total_steps=8, vocab_size=16, make_governor=make_governor)
    suite_file = tmp_path / "evil.yaml"
    suite_file.write_text(yaml.safe_dump(suite))
    assert evaluate.main(["--suite", str(suite_file), "--out", str(tmp_path / "cli"), "--no-plots"]) == 2
    assert convert.main([str(evil)]) == 2
    assert checkpoint_timesteps(evil) == 0  # train_policy.py resume= reads the step count as plain JSON
    assert not marker.exists() and not (tmp_path / "out").exists()
    # The payload is real: trusting the file runs it.
    with contextlib.suppress(ConfigError):
        make_governor(spec, trust_pickle=True)
    assert marker.exists()


def test_crafted_vecnormalize_pkl_is_refused_and_never_read_beside_a_governor_file(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    model = make_model()
    zip_path = legacy_run(tmp_path, model)
    (zip_path.parent / "vecnormalize.pkl").write_bytes(touch_payload(marker))
    with pytest.raises(ConfigError, match="--trust-pickle"):
        make_governor(f"ppo:{zip_path}")
    assert not marker.exists()
    # A governor file never looks at a .pkl, wherever one lies.
    folder = save_policy_file(
        model, zip_path.with_suffix(""), SETTINGS, algorithm="ppo", vecnormalize=model.get_vec_normalize_env()
    )
    (folder / "vecnormalize.pkl").write_bytes(touch_payload(marker))
    governor = make_governor(f"ppo:{folder}")
    assert governor.obs_rms is not None and not marker.exists()  # type: ignore[attr-defined]
    with contextlib.suppress(ConfigError, AttributeError):
        make_governor(f"ppo:{zip_path}", trust_pickle=True)
    assert marker.exists()


def test_tampered_governor_files_are_refused_naming_the_file(tmp_path: Path) -> None:
    model = make_model()
    folder = save_policy_file(
        model, tmp_path / "gov", SETTINGS, algorithm="ppo", vecnormalize=model.get_vec_normalize_env()
    )
    pristine = {name: (folder / name).read_bytes() for name in MEMBERS}

    def restore() -> None:
        for name, data in pristine.items():
            (folder / name).write_bytes(data)

    weights = bytearray(pristine[WEIGHTS])
    weights[-1] ^= 0x01
    (folder / WEIGHTS).write_bytes(bytes(weights))
    with pytest.raises(ConfigError, match=r"policy\.safetensors does not match its sha256"):
        make_governor(f"ppo:{folder}")
    restore()
    (folder / NORMALIZER).write_text(pristine[NORMALIZER].decode().replace('"clip_obs": 10.0', '"clip_obs": 99.0'))
    with pytest.raises(ConfigError, match=r"vecnormalize\.json does not match its sha256"):
        make_governor(f"ppo:{folder}")
    restore()
    (folder / NORMALIZER).unlink()
    with pytest.raises(ConfigError, match=r"vecnormalize\.json is missing"):
        make_governor(f"ppo:{folder}")

    def with_manifest(change: Any, match: str) -> None:
        restore()
        manifest = json.loads(pristine[MANIFEST])
        change(manifest)
        (folder / MANIFEST).write_text(json.dumps(manifest))
        with pytest.raises(ConfigError, match=match):
            load_policy_file(folder)

    # A manifest can only name the allow-listed classes, by name; nothing is imported from it.
    with_manifest(lambda m: m["policy_kwargs"].update(activation_fn={":class:": "system"}), "'system' is not one")
    with_manifest(lambda m: m.update(policy_class="Popen"), "policy class 'Popen'")
    with_manifest(lambda m: m["policy_kwargs"].update(net_arch=[10**9]), "out of range")
    with_manifest(lambda m: m["settings"].update(window=5), "observation space does not match its settings")
    with_manifest(lambda m: m["settings"]["envelope"].update(rollback_action=False), "action space does not match")
    with_manifest(lambda m: m["observation_space"].update(dtype="object"), "numeric dtype")
    with_manifest(lambda m: m.update(format_version=99), "format version 99")
    # Crafted values that used to escape as raw TypeErrors / RuntimeErrors or a 4 TiB allocation.
    with_manifest(lambda m: m.update(policy_class=["x"]), r"policy class \['x'\]")
    with_manifest(lambda m: m["policy_kwargs"].update(activation_fn={":class:": ["Tanh"]}), "is not one")
    with_manifest(lambda m: m["policy_kwargs"].update(net_arch=[-1, 64]), "net_arch: expected lists")
    with_manifest(lambda m: m["policy_kwargs"].update(net_arch=[1 << 20, 1 << 20]), "net_arch: expected lists")

    def with_statistics(change: Any, match: str) -> None:
        """Tampered normaliser statistics under a matching sha256: refused at load, naming the field."""
        restore()
        stats = json.loads(pristine[NORMALIZER])
        change(stats)
        data = json.dumps(stats).encode()
        (folder / NORMALIZER).write_bytes(data)
        manifest = json.loads(pristine[MANIFEST])
        manifest["files"][NORMALIZER] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        (folder / MANIFEST).write_text(json.dumps(manifest))
        with pytest.raises(ConfigError, match=match):
            load_policy_file(folder)

    with_statistics(lambda s: s["obs_rms"]["mean"].__setitem__(3, "inf"), r"obs_rms\.mean: expected finite")
    with_statistics(lambda s: s["obs_rms"]["mean"].__setitem__(3, "nan"), r"obs_rms\.mean: expected finite")
    with_statistics(lambda s: s.update(epsilon="inf"), "epsilon: expected a finite")
    with_statistics(lambda s: s.update(clip_obs="inf"), "clip_obs: expected a positive finite")
    with_statistics(lambda s: s["obs_rms"]["mean"].__setitem__(0, True), "not booleans")

    def no_spread(s: dict[str, Any]) -> None:
        s["obs_rms"]["var"][0], s["epsilon"] = 0.0, 0.0

    with_statistics(no_spread, r"var \+ epsilon: expected > 0")
    # A governor zip holds its three members and nothing else.
    restore()
    odd = tmp_path / "odd.zip"
    with zipfile.ZipFile(odd, "w") as zf:
        for name in MEMBERS:
            zf.write(folder / name, name)
        zf.writestr("data.pkl", touch_payload(tmp_path / "pwned"))
    with pytest.raises(ConfigError, match=r"holds only .*; found data\.pkl"):
        load_policy_file(odd)
    assert not (tmp_path / "pwned").exists()


def test_spec_errors_are_one_line() -> None:
    with pytest.raises(ConfigError, match="model file not found"):
        make_governor("ppo:/nonexistent/best_model.zip")
    with pytest.raises(ConfigError, match="no governor file there"):
        make_governor(f"ppo:{REPO / 'configs'}")
    with pytest.raises(ConfigError, match="not a governor folder"):
        make_governor(f"ppo:{REPO / 'README.md'}")


# ----------------------------------------------------------------------------------------------------------
# One governor, one behaviour
# ----------------------------------------------------------------------------------------------------------


def test_check_compatible_names_what_differs(tmp_path: Path) -> None:
    model = make_model()
    folder = save_policy_file(
        model, tmp_path / "gov", SETTINGS, algorithm="ppo", vecnormalize=model.get_vec_normalize_env()
    )
    governor = make_governor(f"ppo:{folder}")
    ok = {"observation_space": SETTINGS.observation_space(), "action_space": SETTINGS.action_space()}
    check_compatible(governor, **ok)

    def refused(match: str, **spaces: gym.Space) -> None:
        with pytest.raises(ConfigError, match=match) as err:
            check_compatible(governor, **{**ok, **spaces})
        assert "\n" not in str(err.value) and f"ppo:{folder}" in str(err.value)

    refused(
        r"observation space Box\(60,\) vs Box\(75,\)",
        observation_space=GovernanceSettings(8, 5, SETTINGS.envelope).observation_space(),
    )
    refused(
        r"action space Box\(3,\) vs Box\(2,\)",
        action_space=GovernanceSettings(8, 4, EnvelopeConfig(rollback_action=False)).action_space(),
    )
    discrete = EnvelopeConfig(action_mode="discrete", rollback_action=True)
    refused(
        r"action space Box\(3,\) vs MultiDiscrete\(\[5, 5, 2\]\)",
        action_space=GovernanceSettings(8, 4, discrete).action_space(),
    )
    with pytest.raises(ConfigError, match="normaliser"):
        check_compatible(governor, **ok, normalizer=None)
    check_compatible(governor, **ok, normalizer="VecNormalize")
    # Rule governors are built for the envelope they are given: they fit any.
    check_compatible(
        make_governor("lbw_guard"), observation_space=gym.spaces.Box(-1, 1, (7,)), action_space=ok["action_space"]
    )


def test_settings_are_adopted_or_conflicts_refused_in_one_line(tmp_path: Path) -> None:
    model = make_model()
    folder = save_policy_file(
        model, tmp_path / "gov", SETTINGS, algorithm="ppo", vecnormalize=model.get_vec_normalize_env()
    )
    governor = make_governor(f"ppo:{folder}")
    check_settings(governor, SETTINGS.config())
    run = GovernanceConfig(decision_interval=4, envelope=EnvelopeConfig(rollback_action=False))
    with pytest.raises(ConfigError) as err:
        check_settings(governor, run)
    message = str(err.value)
    assert "\n" not in message and "decision_interval: trained with 8, this run has 4" in message
    assert "envelope.rollback_action: trained with True, this run has False" in message
    adopted = governor.settings.adopt(run)  # type: ignore[attr-defined]
    assert adopted.decision_interval == 8 and adopted.envelope.rollback_action
    check_settings(governor, adopted)
    check_settings(make_governor("adamw"), run)  # rule governors have no training settings


# ----------------------------------------------------------------------------------------------------------
# The shipped governor
# ----------------------------------------------------------------------------------------------------------


SHIPPED = sorted(p.parent.relative_to(REPO).as_posix() for p in (REPO / "artifacts").rglob("manifest.json"))


@pytest.mark.parametrize("path", SHIPPED)
def test_shipped_governor_files_load_with_their_training_settings(path: str) -> None:
    """Every governor file under artifacts/ (best, final, warm-start and candidate models alike) loads without
    pickle, carries the settings of the run that made it (its folder's env.yaml) and answers in the action space."""
    governor = make_governor(f"ppo:{REPO / path}")
    run_env = yaml.safe_load((REPO / Path(path).parts[0] / Path(path).parts[1] / "env.yaml").read_text())["train"]
    settings = governor.settings  # type: ignore[attr-defined]
    assert settings.decision_interval == run_env["decision_interval"] == 8 and settings.window == run_env["window"]
    assert {k: v for k, v in to_dict(settings.envelope).items() if k in run_env["envelope"]} == run_env["envelope"]
    assert getattr(governor, "learned", governor).obs_rms is not None  # a residual's learned part normalises
    assert not list((REPO / "artifacts").rglob("*.pkl")), "shipped governors must not need pickle"
    obs = observations(settings)
    actions = governor_actions(governor, obs)
    assert all(settings.action_space().contains(a) for a in actions)
