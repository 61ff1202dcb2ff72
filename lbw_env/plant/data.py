"""Tokenized WikiText and seeded batches: the token cache, :class:`Corpus` and :class:`BatchStream`.

The data flow, one module per stage: text (:mod:`lbw_env.plant.sources`) -> tokenizer
(:mod:`lbw_env.plant.tokenizer`) -> token cache and batches (here).

1. :func:`load_corpus` tokenizes each split once and caches it as ``.npy`` under
   ``<cache>/tokens/<key>/<split>.npy`` (keyed by the tokenizer's content and the split's source content, with
   a sha256 digest checked on every load: a zero-filled or truncated array is logged and rebuilt), then
   memory-maps it. Results are also memoised in-process, so an environment reset costs nothing.
   :func:`check_data` is the same load plus the size checks a run would otherwise fail on mid-way; the CLIs
   call it before they create any output.
2. :class:`BatchStream` cuts a split into blocks of ``seq_len + 1`` tokens and serves a seeded permutation of
   them per epoch; its ``state()`` is two ints, so a run can be checkpointed and resumed exactly.
   :func:`eval_blocks` picks a fixed, evenly spread evaluation subset (no randomness at all).

Every error about the input is a :class:`~lbw_env.plant.sources.DataError` naming the file or folder and what
was expected.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cache import cache_root, stable_hash, store_file, verified_file
from .config import DataConfig
from .sources import SPLITS, DataError, Split, data_root, load_split_text, source_fingerprint, split_files
from .tokenizer import Tokenizer, get_tokenizer

log = logging.getLogger(__name__)

# Bump when the token-array layout changes, so stale cache entries are never reused.
_TOKENS_RECIPE = 1


# ----------------------------------------------------------------------------------------------------------
# Token cache and corpus
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Corpus:
    """The three tokenized splits (read-only memory maps) and the tokenizer that made them."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    vocab_size: int
    eos_id: int
    tokenizer: Tokenizer = dataclasses.field(repr=False)


def _tokens_path(tok: Tokenizer, cfg: DataConfig, split: Split, root: Path) -> Path:
    key = stable_hash("tokens", _TOKENS_RECIPE, tok.key, source_fingerprint(cfg, split), length=20)
    return root / "tokens" / key / f"{split}.npy"


def _save_npy(ids: np.ndarray, tmp: Path) -> None:
    with open(tmp, "wb") as f:
        np.save(f, ids)  # to a file handle: given a path, numpy would append ".npy" to the temporary name


def _cached_split(tok: Tokenizer, cfg: DataConfig, split: Split, root: Path) -> np.ndarray:
    path = _tokens_path(tok, cfg, split, root)
    if not verified_file(path, f"{split} token array"):
        lines = load_split_text(cfg, split)
        t0 = time.perf_counter()
        ids = tok.encode_lines(lines)
        log.info("tokenized %s: %d lines -> %d tokens in %.1fs", split, len(lines), ids.size, time.perf_counter() - t0)
        store_file(path, functools.partial(_save_npy, ids), f"{split} token array")
    try:
        return np.load(path, mmap_mode="r")
    except ValueError as e:  # the digest matched, so this is a numpy that reads the format differently
        raise DataError(f"token array {path}: unreadable by numpy {np.__version__} ({e}); delete it to rebuild") from e


@functools.lru_cache(maxsize=16)
def _load_full_corpus(fields: tuple[tuple[str, Any], ...], root: str) -> Corpus:
    cfg = DataConfig(**dict(fields))
    tok = get_tokenizer(cfg, Path(root))
    arrays = {split: _cached_split(tok, cfg, split, Path(root)) for split in SPLITS}
    return Corpus(**arrays, vocab_size=tok.vocab_size, eos_id=tok.eos_id, tokenizer=tok)


# The fields that decide the token arrays; seq_len, batch_size, ... only decide how they are cut.
_CORPUS_FIELDS = ("source", "train_dir", "eval_dir", "hub_repo", "hub_config", "tokenizer", "vocab_size")


def load_corpus(cfg: DataConfig, cache_dir: str = "") -> Corpus:
    """Tokenized train/valid/test for ``cfg``, from the on-disk cache when possible, memoised in-process.

    ``cache_dir``: the cache root (empty: ``$LBW_CACHE`` or ``~/.cache/lbw_env``). ``cfg.max_train_tokens > 0``
    truncates train to a view of its first tokens (no re-tokenization, no new cache entry).
    """
    cfg.validate()
    root = cache_root(cache_dir)
    fields = {name: getattr(cfg, name) for name in _CORPUS_FIELDS}
    # The resolved data root is part of the memo key ($LBW_DATA_DIR may differ between calls); hub needs none.
    fields["root"] = str(data_root(cfg).resolve()) if cfg.source == "local" else ""
    corpus = _load_full_corpus(tuple(sorted(fields.items())), str(root.resolve()))
    if cfg.max_train_tokens:
        corpus = dataclasses.replace(corpus, train=corpus.train[: cfg.max_train_tokens])
    return corpus


def _where(cfg: DataConfig, split: Split) -> str:
    """How messages name a split's text: its file(s), or the hub dataset."""
    if cfg.source == "hub":
        return f"{split} split of hub dataset {cfg.hub_repo!r}"
    files = split_files(cfg, split)
    return f"{split} file {files[0]}" if len(files) == 1 else f"{split} parquet shards in {files[0].parent}"


def check_data(cfg: DataConfig, cache_dir: str = "") -> Corpus:
    """Load (or build) the corpus of ``cfg`` and check what a run needs of it, naming the file that falls short.

    The data root must exist, each split's files must exist, be non-empty and decode (UTF-8 text or parquet);
    train must hold at least ``batch_size`` blocks of ``seq_len + 1`` tokens (after ``max_train_tokens``), the
    evaluation splits at least one. This is the load a run does anyway (the caches it fills are the run's), so a
    check before the first run costs nothing extra and turns a mid-run failure into a one-line error up front.
    """
    corpus = load_corpus(cfg, cache_dir)
    block = cfg.seq_len + 1
    needs: tuple[tuple[Split, int], ...] = (("train", cfg.batch_size), ("valid", 1), ("test", 1))
    for split, need in needs:
        tokens = getattr(corpus, split)
        blocks = _n_blocks(tokens, cfg.seq_len)
        if blocks < need:
            capped = split == "train" and cfg.max_train_tokens
            cut = f" (data.max_train_tokens={cfg.max_train_tokens})" if capped else ""
            raise DataError(
                f"{_where(cfg, split)}: {len(tokens)} tokens{cut} make {blocks} blocks of seq_len+1={block}; "
                f"expected at least {need} ({'data.batch_size' if split == 'train' else 'one evaluation block'})"
            )
    return corpus


def clear_memo() -> None:
    """Forget in-process corpora (the on-disk cache stays); for tests and for data edited while running."""
    _load_full_corpus.cache_clear()


# ----------------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------------


def _n_blocks(tokens: np.ndarray, seq_len: int) -> int:
    # Block i is tokens[i*seq_len : i*seq_len + seq_len + 1]; the last one must fit entirely.
    return max(0, (len(tokens) - 1) // seq_len)


def _gather(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> torch.Tensor:
    index = starts[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    # Fancy indexing copies out of the memory map; int64 because embedding lookups and cross-entropy want it.
    return torch.from_numpy(np.asarray(tokens[index], dtype=np.int64))


class BatchStream:
    """Seeded batches of token blocks, resumable from two ints.

    The split is cut into ``n_blocks`` blocks of ``seq_len + 1`` tokens starting at multiples of ``seq_len``
    (neighbouring blocks share one token, because inputs are ``block[:-1]`` and targets ``block[1:]``). Epoch
    ``e`` visits the blocks in the order ``np.random.default_rng([seed, e]).permutation(n_blocks)``; a batch is
    the next ``batch_size`` blocks of that order, running on into the next epoch when one ends. The position is
    ``{"epoch", "pos"}``, so ``set_state(state())`` continues exactly and nothing else needs saving.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int) -> None:
        if tokens.ndim != 1:
            raise DataError(f"tokens: expected a 1-D array, got shape {tokens.shape}")
        if seq_len < 1 or batch_size < 1:
            raise DataError(f"seq_len={seq_len}, batch_size={batch_size}: expected both >= 1")
        if seed < 0:
            raise DataError(f"seed={seed}: expected an int >= 0")
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = int(seed)
        self.n_blocks = _n_blocks(tokens, seq_len)
        if self.n_blocks < batch_size:
            raise DataError(
                f"tokens: {len(tokens)} tokens make {self.n_blocks} blocks of seq_len+1={seq_len + 1}; "
                f"expected at least batch_size={batch_size} blocks"
            )
        self.tokens_per_batch = batch_size * seq_len
        self._epoch = 0
        self._pos = 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n_blocks)

    def next_indices(self) -> np.ndarray:
        """Advance by one batch and return its block indices (what :meth:`next` gathers)."""
        picked = []
        need = self.batch_size
        while need:
            if self._pos == self.n_blocks:
                self._epoch += 1
                self._pos = 0
                self._perm = self._permutation(self._epoch)
            take = self._perm[self._pos : self._pos + need]
            picked.append(take)
            self._pos += len(take)
            need -= len(take)
        return np.concatenate(picked)

    def next(self) -> torch.Tensor:
        """The next batch: int64 ``[batch_size, seq_len + 1]``."""
        return _gather(self.tokens, self.next_indices(), self.seq_len)

    def state(self) -> dict[str, int]:
        """Where the stream is: ``{"epoch": e, "pos": p}`` (plain ints, JSON-safe)."""
        return {"epoch": int(self._epoch), "pos": int(self._pos)}

    def set_state(self, state: dict[str, int]) -> None:
        """Jump to a position returned by :meth:`state` (of a stream with the same tokens, shape and seed)."""
        epoch, pos = int(state["epoch"]), int(state["pos"])
        if epoch < 0 or not 0 <= pos <= self.n_blocks:
            raise DataError(f"batch state {state}: expected epoch >= 0 and 0 <= pos <= n_blocks={self.n_blocks}")
        if epoch != self._epoch:
            self._perm = self._permutation(epoch)
        self._epoch, self._pos = epoch, pos


def eval_blocks(tokens: np.ndarray, seq_len: int, n_blocks: int) -> torch.Tensor:
    """The fixed evaluation subset: ``n_blocks`` blocks of ``seq_len + 1`` spread evenly over the split.

    Block ``i`` of ``k`` starts at block index ``i * total // k`` (integer arithmetic: identical everywhere, no
    RNG). A short split gives fewer blocks (all of them), but always at least one.
    """
    if n_blocks < 1 or seq_len < 1:
        raise DataError(f"eval_blocks: n_blocks={n_blocks}, seq_len={seq_len}; expected both >= 1")
    total = _n_blocks(tokens, seq_len)
    if total < 1:
        raise DataError(f"tokens: {len(tokens)} tokens; expected at least seq_len+1={seq_len + 1} for one block")
    k = min(n_blocks, total)
    starts = np.arange(k, dtype=np.int64) * total // k
    return _gather(tokens, starts, seq_len)
