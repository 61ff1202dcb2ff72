"""Verified cache entries: each kind (BPE tokenizer JSON, token array, base checkpoint) corrupted on disk after it
was written is detected on the next load, logged in one line naming the file, and rebuilt; the run never sees
the corrupt data. Entries without a digest (an unfinished write, or a cache from before digests) are rebuilt the
same way, and an entry that cannot be written names the file.

Tiny data (``tests/tiny_wikitext.py``), a vocabulary of 512 and a 4-step base checkpoint: a few seconds in all.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from lbw_env import cache as lbw_cache
from lbw_env.cache import MANIFEST, CacheError, digest_path, file_problem, folder_problem
from lbw_env.plant import data
from lbw_env.plant.config import DataConfig, load_trainer_config
from lbw_env.plant.data import load_corpus
from lbw_env.plant.models import from_pretrained
from lbw_env.plant.tokenizer import get_tokenizer
from lbw_env.plant.trainer import ensure_base_checkpoint
from tests.tiny_wikitext import tiny_root


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private cache root (also ``$LBW_CACHE``) and a clean in-process corpus memo."""
    path = tmp_path / "cache"
    monkeypatch.setenv("LBW_CACHE", str(path))
    monkeypatch.delenv(lbw_cache.ENV_VERIFY, raising=False)
    data.clear_memo()
    yield path
    data.clear_memo()


def small_cfg() -> DataConfig:
    return DataConfig(root=str(tiny_root()), vocab_size=512, seq_len=32, batch_size=4, eval_blocks=4)


def rebuilt_lines(caplog: pytest.LogCaptureFixture, path: Path) -> list[str]:
    """The cache's log lines that name ``path`` and say it is rebuilt (one line each)."""
    lines = [r.getMessage() for r in caplog.records if r.name == "lbw_env.cache"]
    hits = [m for m in lines if str(path) in m and "rebuilding" in m]
    assert all("\n" not in m for m in hits)
    return hits


def test_truncated_tokenizer_is_detected_and_retrained(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = get_tokenizer(small_cfg(), root)
    (path,) = (root / "tokenizers").glob("*.json")
    assert digest_path(path).is_file() and file_problem(path) is None
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a torn copy, a full disk ...
    with caplog.at_level(logging.WARNING, logger="lbw_env.cache"):
        again = get_tokenizer(small_cfg(), root)
    assert len(rebuilt_lines(caplog, path)) == 1
    assert again.key == first.key and file_problem(path) is None


def test_zero_filled_token_array_is_detected_and_rebuilt(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    corpus = load_corpus(small_cfg())
    expected = np.array(corpus.train)  # a copy: the memory map would show the corruption too
    (path,) = (root / "tokens").rglob("train.npy")
    raw = path.read_bytes()
    # Header kept, tokens zeroed, size unchanged: numpy reads it happily, and a model trained on it gives inf ppl.
    path.write_bytes(raw[:128] + bytes(len(raw) - 128))
    assert np.load(path).sum() == 0
    data.clear_memo()
    with caplog.at_level(logging.WARNING, logger="lbw_env.cache"):
        again = load_corpus(small_cfg())
    assert len(rebuilt_lines(caplog, path)) == 1
    np.testing.assert_array_equal(np.asarray(again.train), expected)
    assert file_problem(path) is None


def test_same_size_corrupted_base_checkpoint_is_detected_and_rebuilt(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = load_trainer_config(
        {
            "data": {"root": str(tiny_root()), "vocab_size": 512, "seq_len": 32, "batch_size": 4, "eval_blocks": 4},
            "model": {"preset": "qwen2-tiny"},
            "runtime": {"threads": 1},
            "regime": "finetune",
            "base_steps": 4,
        }
    )
    corpus = load_corpus(cfg.data)
    folder = ensure_base_checkpoint(cfg, corpus)
    assert (folder / MANIFEST).is_file() and folder_problem(folder) is None
    weights = next(folder.glob("*.safetensors"))
    good = {k: v.clone() for k, v in from_pretrained(folder).state_dict().items()}
    raw = bytearray(weights.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 64] = bytes(b ^ 0xFF for b in raw[middle : middle + 64])  # same size, other bytes
    weights.write_bytes(bytes(raw))
    assert "sha256" in (folder_problem(folder) or "")
    with caplog.at_level(logging.WARNING, logger="lbw_env.cache"):
        again = ensure_base_checkpoint(cfg, corpus)
    assert again == folder and len(rebuilt_lines(caplog, folder)) == 1
    assert folder_problem(folder) is None
    rebuilt = from_pretrained(folder).state_dict()
    for name, tensor in good.items():  # pretraining is deterministic: the same weights as before the corruption
        assert torch.equal(rebuilt[name], tensor), name


def test_entries_without_a_digest_are_rebuilt(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The digest is written last: an entry without one was never finished (or predates digests)."""
    load_corpus(small_cfg())
    (path,) = (root / "tokens").rglob("valid.npy")
    digest_path(path).unlink()
    assert "no valid.npy.sha256" in (file_problem(path) or "")
    data.clear_memo()
    with caplog.at_level(logging.WARNING, logger="lbw_env.cache"):
        load_corpus(small_cfg())
    assert len(rebuilt_lines(caplog, path)) == 1 and file_problem(path) is None


def test_size_only_verification_still_catches_truncation(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``LBW_CACHE_VERIFY=size`` (for multi-GB entries) skips the hash: a same-size change passes, a cut does not."""
    load_corpus(small_cfg())
    (path,) = (root / "tokens").rglob("test.npy")
    monkeypatch.setenv(lbw_cache.ENV_VERIFY, "size")
    raw = path.read_bytes()
    path.write_bytes(raw[:-2] + b"\x01\x02")
    assert file_problem(path) is None
    path.write_bytes(raw[:-2])
    assert "bytes" in (file_problem(path) or "")


def test_an_entry_that_cannot_be_written_names_the_file(root: Path) -> None:
    root.mkdir(parents=True)
    (root / "tokens").write_text("a file where the token folder belongs")
    with pytest.raises(CacheError, match=r"cannot write train token array .*tokens/.*train\.npy"):
        load_corpus(small_cfg())
    assert not [p for p in root.rglob("*") if p.name.startswith(".")], "a temporary file was left behind"
