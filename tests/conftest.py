"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only WikiText data root: ``$LBW_DATA_DIR``, else ``../shared/data`` beside the repository.

    CI clones the repository next to a copy of ``shared/``; tests never copy these files into the repo. Resolved
    to an absolute path here, where it is read: tests hand it on as ``$LBW_DATA_DIR`` to code that runs after a
    ``chdir`` (``monkeypatch.chdir``, subprocesses with ``cwd=tmp_path``), where a relative one would break.
    """
    root = Path(os.environ.get("LBW_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data").resolve()
    if not (root / "wikitext-2" / "wiki.train.tokens").is_file():
        pytest.skip(
            f"WikiText data not found at {root} (set LBW_DATA_DIR to a folder with wikitext-2/wiki.train.tokens)"
        )
    return root


# ----------------------------------------------------------------------------------------------------------
# The training plant (tests/test_trainer.py, tests/test_models.py): one cache and one corpus per session
# ----------------------------------------------------------------------------------------------------------

SMALL_VOCAB = 2048
"""Vocabulary of the session corpus: small, so the LM head (the tiny preset's main cost) stays cheap."""


@pytest.fixture(scope="session")
def lbw_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A cache root for the whole session (tokenizer, token arrays, base checkpoints), also set as ``$LBW_CACHE``.

    Session-scoped so the BPE is trained and WikiText-2 tokenized once per session, never in ``~/.cache``.
    """
    root = tmp_path_factory.mktemp("lbw_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LBW_CACHE", str(root))
        yield root


@pytest.fixture(scope="session")
def torch_threads() -> None:
    """One torch thread: the test machine has two cores shared with other jobs, and a tiny model's steps on two
    contended threads were measured 10-50x slower (OpenMP spin-waiting) than on one."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def lbw(shared_data: Path, lbw_cache: Path, torch_threads: None) -> Iterator[None]:
    """The data root as ``$LBW_DATA_DIR`` (scenario configs leave ``data.root`` empty), the session cache and one
    torch thread, for tests that make envs from ids or scenarios. Set in ``os.environ``, so that vector-env worker
    and trainer subprocesses inherit them."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LBW_DATA_DIR", str(shared_data))
        yield


@pytest.fixture
def short_training(tmp_path: Path) -> Callable[..., Path]:
    """Write a training config and return its path: 16 decisions of 4 steps on 2 dummy envs, a one-layer PPO, no
    evaluations during training or checkpoints, the run folder ``tmp_path / "run"``; keyword ``changes``
    replace whole top-level keys (``hyperparams=...``) or add sections (``warm_start=...``)."""
    import yaml

    def write(**changes: Any) -> Path:
        data: dict[str, Any] = {
            "env": {
                "decision_interval": 4,
                "trainer_overrides": ["optim.steps=16", "base_steps=8", "data.eval_blocks=4"],
            },
            "hyperparams": {"n_steps": 8, "batch_size": 16, "n_epochs": 1, "policy_kwargs": {"net_arch": [16]}},
            "total_timesteps": 16,
            "n_envs": 2,
            "vec_env": "dummy",
            "eval": {"scenarios": ["tiny/high_lr"], "seeds": 1, "eval_freq": 0},
            "checkpoint_freq": 0,
            "progress_bar": False,
            "verbose": 0,
            "run_dir": str(tmp_path / "run"),
            **changes,
        }
        path = tmp_path / "ppo.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return write


@pytest.fixture(scope="session")
def corpus(shared_data: Path, lbw_cache: Path) -> Any:
    """WikiText-2 train / WikiText-103 valid+test, tokenized with a BPE of ``SMALL_VOCAB``, once per session."""
    from lbw_env.plant.config import DataConfig
    from lbw_env.plant.data import load_corpus

    return load_corpus(DataConfig(root=str(shared_data), vocab_size=SMALL_VOCAB), str(lbw_cache))


@pytest.fixture
def make_cfg(shared_data: Path, lbw_cache: Path, torch_threads: None) -> Callable[..., Any]:
    """Factory of small :class:`~lbw_env.config.TrainerConfig` s (qwen2-tiny, seq 32, batch 4, 8 eval blocks).

    ``make_cfg("optim.lr=1e-3", faults=[{"kind": "nan_loss", "start": 3}])``: ``key=value`` overrides win
    over the small defaults; ``faults`` is a list of FaultConfig mappings.
    """
    from lbw_env.plant.config import load_trainer_config

    def make(*overrides: str, faults: Sequence[Mapping[str, Any]] = ()) -> Any:
        data: dict[str, Any] = {
            "model": {"preset": "qwen2-tiny"},
            "data": {
                "root": str(shared_data),
                "vocab_size": SMALL_VOCAB,
                "seq_len": 32,
                "batch_size": 4,
                "eval_blocks": 8,
            },
            "optim": {"steps": 100, "warmup_steps": 5},
            "runtime": {"threads": 1, "cache_dir": str(lbw_cache)},
            "faults": [dict(f) for f in faults],
        }
        return load_trainer_config(data, overrides)

    return make


@pytest.fixture(scope="session")
def tiny_data(shared_data: Path) -> Path:
    """A small WikiText data root (see ``tests/tiny_wikitext.py``): the first whole articles of WikiText-2 train
    (8), and of valid/test (2 each) in the ``wikitext-2``, ``wikitext-103`` and ``wikitext-2-raw`` layouts, cut
    from the shared data once per machine (never stored in the repository) and checked against their sha256.
    Read-only: copy it before editing anything in it."""
    from tests.tiny_wikitext import tiny_root

    return tiny_root()
