"""Stable-Baselines3's canonical usage on the registered ids, as its documentation writes it.

SB3 makes an env from an id with ``gym.make(id, render_mode="rgb_array")`` (``PPO("MlpPolicy", id)``,
``make_vec_env(id)``), so the env must render ``rgb_array``; ``SubprocVecEnv`` workers build their env from the
id in a fresh process, so a user script's ``import lbw_env`` must be enough to register it there; and
``VecVideoRecorder`` records the frames. The exact quick start (``PPO("MlpPolicy", id).learn(64)``) collects one
full default rollout of 2048 decisions (~16k optimizer steps: 21 minutes measured on a busy 2-core machine with a
cold cache), so it is ``slow``; the default run checks the same path with a 16-decision rollout (~1 minute).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from stable_baselines3 import PPO

import lbw_env  # noqa: F401  (registers the ids, as a user script does)
from lbw_env.render import FRAME_HEIGHT, FRAME_WIDTH

TINY_ID = "LBW/WikiText-Tiny-v0"


def test_ppo_from_the_id_with_a_short_rollout(lbw: None) -> None:
    """``PPO("MlpPolicy", id)``: the id with its defaults, made by SB3 with ``render_mode="rgb_array"``."""
    model = PPO("MlpPolicy", TINY_ID, n_steps=16, batch_size=16, n_epochs=1, seed=0)
    venv = model.get_env()
    assert venv is not None and venv.render_mode == "rgb_array"
    model.learn(16)
    assert model.num_timesteps == 16
    frame = venv.render()
    assert isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.shape == (FRAME_HEIGHT, FRAME_WIDTH, 3)


@pytest.mark.slow
def test_ppo_quick_start_exactly_as_sb3_documents_it(lbw: None) -> None:
    """SB3's quick start, word for word (one default PPO rollout: 2048 decisions, ~20 minutes on 2 CPU cores)."""
    model = PPO("MlpPolicy", TINY_ID).learn(64)
    assert model.num_timesteps >= 64


SCRIPT = textwrap.dedent(
    """
    import json
    import sys

    import numpy as np
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import SubprocVecEnv, VecVideoRecorder

    import lbw_env  # registers the ids, here and (through the forkserver's preload of __main__) in the workers


    def main() -> None:
        envs = make_vec_env("LBW/WikiText-Tiny-v0", n_envs=2, vec_env_cls=SubprocVecEnv, seed=0)
        render_modes = envs.get_attr("render_mode")
        envs = VecVideoRecorder(envs, sys.argv[1], record_video_trigger=lambda step: step == 0, video_length=3)
        obs = envs.reset()
        rewards = []
        for _ in range(4):
            obs, reward, dones, infos = envs.step(np.stack([envs.action_space.sample() for _ in range(2)]))
            rewards += reward.tolist()
        envs.close()
        print(json.dumps({"render_modes": render_modes, "obs": list(obs.shape), "rewards": rewards}))


    if __name__ == "__main__":
        main()
    """
)


def test_make_vec_env_subproc_and_video_from_a_user_script(shared_data: Path, lbw_cache: Path, tmp_path: Path) -> None:
    """``make_vec_env(id, n_envs=2, vec_env_cls=SubprocVecEnv)`` and ``VecVideoRecorder``, run as a user script.

    A script, not this test process: the workers import what the script's ``__main__`` imports (pytest's
    ``__main__`` does not import lbw_env; in-process tests use the ``"lbw_env:<id>"`` form instead)."""
    script = tmp_path / "quickstart.py"
    script.write_text(SCRIPT)
    videos = tmp_path / "videos"
    env = {**os.environ, "LBW_DATA_DIR": str(shared_data), "LBW_CACHE": str(lbw_cache), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script), str(videos)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["render_modes"] == ["rgb_array", "rgb_array"]
    assert result["obs"][0] == 2 and np.isfinite(result["rewards"]).all()
    movies = list(videos.glob("*.mp4"))
    assert len(movies) == 1 and movies[0].stat().st_size > 1000
