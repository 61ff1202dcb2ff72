"""WikiText in, seeded blocks of token ids out: source -> lines -> tokenizer -> token cache -> batches.

The data flow, one function per stage:

1. :func:`load_split_text` reads one split as a list of lines. ``source: local`` reads a folder under the data
   root (:func:`data_root`: ``DataConfig.root`` or ``$LBW_DATA_DIR``) holding ``wiki.{split}.tokens``,
   ``wiki.{split}.raw`` or Hugging Face parquet shards; ``source: hub`` calls ``datasets.load_dataset``. All
   sources give the same lines for the same text: WikiText lines verbatim (leading space included), without
   the newline, blank lines dropped.
2. :func:`get_tokenizer` returns a :class:`Tokenizer`: a byte-level BPE trained on the train split and cached
   as JSON (keyed by the content of the train text, the vocabulary size and the ``tokenizers`` version), or a
   pretrained tokenizer (``AutoTokenizer.from_pretrained``). ``encode_lines`` appends ``eos_id`` after each
   line, so documents are separated the way WikiText's ``<eos>`` convention expects.
3. :func:`load_corpus` tokenizes each split once and caches it as ``.npy`` under
   ``<cache>/tokens/<key>/<split>.npy`` (keyed by the tokenizer's content and the split's source content),
   then memory-maps it. Results are also memoised in-process, so an environment reset costs nothing.
4. :class:`BatchStream` cuts a split into blocks of ``seq_len + 1`` tokens and serves a seeded permutation of
   them per epoch; its ``state()`` is two ints, so a run can be checkpointed and resumed exactly.
   :func:`eval_blocks` picks a fixed, evenly spread evaluation subset (no randomness at all).

Every error about the input is a :class:`DataError` naming the file or folder and what was expected.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tokenizers
import torch

from ..cache import atomic_path, cache_root, file_fingerprint, stable_hash
from .config import DataConfig

log = logging.getLogger(__name__)

ENV_DATA_DIR = "LBW_DATA_DIR"
"""Environment variable naming the data root when ``DataConfig.root`` is empty."""

Split = Literal["train", "valid", "test"]
SPLITS: tuple[Split, ...] = ("train", "valid", "test")
HF_SPLITS: dict[str, str] = {"train": "train", "valid": "validation", "test": "test"}
"""Our split names -> the Hugging Face ``Salesforce/wikitext`` split names (also the parquet shard prefixes)."""

EOS_TOKEN = "<eos>"
"""The one special token of the trained BPE, appended after every line."""

# Bump when the BPE recipe or the token-array layout changes, so stale cache entries are never reused.
_BPE_RECIPE = 1
_TOKENS_RECIPE = 1
# Lines per encode_batch call: large enough to keep the Rust side busy, small enough that the per-line
# Python objects of WikiText-103's 1.8M-line train split never all exist at once.
_ENCODE_CHUNK = 16384


class DataError(ValueError):
    """Bad data input; message names the file/folder and what was expected."""


# ----------------------------------------------------------------------------------------------------------
# Text sources
# ----------------------------------------------------------------------------------------------------------


def data_root(cfg: DataConfig) -> Path:
    """The data root: ``cfg.root`` if set, else ``$LBW_DATA_DIR``. It must be an existing folder."""
    if cfg.root:
        root, origin = cfg.root, "data.root"
    else:
        root, origin = os.environ.get(ENV_DATA_DIR, ""), f"${ENV_DATA_DIR}"
        if not root:
            raise DataError(
                f"no data root: set data.root (DataConfig.root) or ${ENV_DATA_DIR} to a folder holding WikiText "
                "folders such as wikitext-2/wiki.train.tokens"
            )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"data root {path} (from {origin}): not a folder; expected a folder of WikiText folders")
    return path


def _check_split(split: str) -> None:
    if split not in HF_SPLITS:
        raise DataError(f"split {split!r}: expected one of {', '.join(SPLITS)}")


def split_files(cfg: DataConfig, split: Split) -> list[Path]:
    """The local files holding ``split``: ``wiki.{split}.tokens``, else ``wiki.{split}.raw``, else parquet shards."""
    _check_split(split)
    sub = cfg.train_dir if split == "train" else cfg.eval_dir
    folder = data_root(cfg) / sub
    if not folder.is_dir():
        field = "data.train_dir" if split == "train" else "data.eval_dir"
        raise DataError(
            f"{split} folder {folder} (from {field}={sub!r}): not found; expected a folder of WikiText files"
        )
    for name in (f"wiki.{split}.tokens", f"wiki.{split}.raw"):
        if (folder / name).is_file():
            return [folder / name]
    pattern = f"{HF_SPLITS[split]}-*.parquet"
    shards = sorted(p for p in folder.glob(pattern) if p.is_file())
    if shards:
        return shards
    raise DataError(
        f"{split} folder {folder}: no {split} text; looked for wiki.{split}.tokens, wiki.{split}.raw and {pattern}"
    )


def _clean_lines(rows: Sequence[str] | Any) -> list[str]:
    """WikiText rows -> lines: drop the line ending (``\\n``, or ``\\r\\n`` in CRLF copies) and blank lines.

    Everything else stays verbatim, including the leading space and the space before the newline, because the
    trained tokenizer and the published token counts both assume the original text.
    """
    out = []
    for row in rows:
        line = row.removesuffix("\n").removesuffix("\r")
        if line.strip():
            out.append(line)
    return out


def _read_text_file(path: Path) -> list[str]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"file {path}: not UTF-8 (invalid byte at offset {e.start}); expected UTF-8 WikiText") from e
    # split("\n"), not splitlines(): splitlines also breaks on \x0b, \x1c, \x85, U+2028 ..., which would be
    # ordinary characters inside a WikiText line, and would then shift the line count off the published one.
    return _clean_lines(text.split("\n"))


def _read_parquet(path: Path) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=["text"])
    except (pa.ArrowException, OSError, KeyError) as e:
        raise DataError(f"parquet file {path}: unreadable or without a 'text' column ({e})") from e
    column = table.column("text")
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise DataError(f"parquet file {path}: column 'text' has type {column.type}; expected strings")
    return _clean_lines(row for row in column.to_pylist() if row is not None)


def _read_hub(cfg: DataConfig, split: Split) -> list[str]:
    import datasets  # heavy import; only the hub source needs it

    hf_split = HF_SPLITS[split]
    kwargs: dict[str, Any] = {}
    if Path(cfg.hub_repo).expanduser().is_dir():
        # A local repo-like folder: datasets keys its cache on the README's `configs:`, not on the data files, so
        # an edited shard would be served stale under our new (content-based) cache key. We only get here on a
        # cache miss, so rebuilding datasets' copy is cheap insurance; its size checks would compare against the
        # stale copy, hence no_checks.
        kwargs = {"download_mode": "force_redownload", "verification_mode": "no_checks"}
    try:
        ds = datasets.load_dataset(cfg.hub_repo, cfg.hub_config, split=hf_split, **kwargs)
        rows = ds["text"]
    except Exception as e:  # network, missing config, missing column: all mean "this source gave no text"
        raise DataError(
            f"hub dataset {cfg.hub_repo!r} (config {cfg.hub_config!r}, split {hf_split!r}): could not load "
            f"a 'text' column with datasets.load_dataset ({type(e).__name__}: {e})"
        ) from e
    return _clean_lines(rows)


def load_split_text(cfg: DataConfig, split: Split) -> list[str]:
    """The non-blank lines of one split, without their newlines, in file order."""
    _check_split(split)
    if cfg.source == "hub":
        lines = _read_hub(cfg, split)
        where = f"hub dataset {cfg.hub_repo!r} (config {cfg.hub_config!r}, split {HF_SPLITS[split]!r})"
    else:
        files = split_files(cfg, split)
        lines = []
        for path in files:
            lines.extend(_read_parquet(path) if path.suffix == ".parquet" else _read_text_file(path))
        where = f"file {files[0]}" if len(files) == 1 else f"parquet shards {', '.join(str(p) for p in files)}"
    if not lines:
        raise DataError(f"{where}: no text (empty or only blank lines); expected WikiText lines")
    return lines


def _hub_local_files(repo: Path, config_name: str) -> list[Path]:
    """Files of a local hub-like folder that can change the text of ``config_name`` (for cache keys)."""
    sub = repo / config_name
    pool = sub.rglob("*") if sub.is_dir() else repo.rglob("*")
    files = [p for p in pool if p.is_file() and not any(part.startswith(".") for part in p.relative_to(repo).parts)]
    if (repo / "README.md").is_file():
        files.append(repo / "README.md")
    return sorted(set(files))


def source_fingerprint(cfg: DataConfig, split: Split) -> dict[str, Any]:
    """What determines the text of ``split``: file contents (local), or the dataset id (hub).

    Local files are identified by content, not path, so moving the data root keeps the caches valid. A hub id
    that is a local folder is fingerprinted by its files' content too, so editing it invalidates the caches.
    """
    _check_split(split)
    if cfg.source == "hub":
        out: dict[str, Any] = {"hub": cfg.hub_repo, "config": cfg.hub_config, "split": HF_SPLITS[split]}
        repo = Path(cfg.hub_repo).expanduser()
        if repo.is_dir():
            files = _hub_local_files(repo, cfg.hub_config)
            out["files"] = [dict(file_fingerprint(p), name=str(p.relative_to(repo))) for p in files]
        return out
    return {"local": [file_fingerprint(p) for p in split_files(cfg, split)]}


# ----------------------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------------------


def token_dtype(vocab_size: int) -> np.dtype[Any]:
    """The narrowest unsigned dtype for token ids: uint16 up to 65,535 entries, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


class Tokenizer:
    """A thin wrapper over a ``tokenizers.Tokenizer`` or a ``transformers`` tokenizer.

    Attributes:
        vocab_size: number of ids (every id is ``< vocab_size``); the model's embedding size.
        eos_id: id appended after every line.
        name: ``"bpe"`` or the pretrained path / hub id.
        key: hash of the tokenizer's content; token caches are keyed by it.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        eos_id: int,
        name: str,
        key: str,
        encode_batch: Callable[[list[str]], list[list[int]]],
        decode: Callable[[list[int]], str],
        backend: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.eos_id = eos_id
        self.name = name
        self.key = key
        self.backend = backend
        self._encode_batch = encode_batch
        self._decode = decode

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.name!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id}, key={self.key!r})"

    def encode(self, text: str) -> list[int]:
        """Ids of one string, without special tokens."""
        return self._encode_batch([text])[0]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of a sequence of ids (special tokens such as ``<eos>`` are kept)."""
        return self._decode([int(i) for i in ids])

    def encode_lines(self, lines: list[str]) -> np.ndarray:
        """Each line's ids followed by ``eos_id``, concatenated, as ``token_dtype(vocab_size)``."""
        parts = []
        for start in range(0, len(lines), _ENCODE_CHUNK):
            batch = self._encode_batch(lines[start : start + _ENCODE_CHUNK])
            count = sum(len(ids) for ids in batch) + len(batch)
            eos = (self.eos_id,)
            flat = itertools.chain.from_iterable(itertools.chain(ids, eos) for ids in batch)
            parts.append(np.fromiter(flat, dtype=np.int64, count=count))
        ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        # Guard the narrowing cast: an id >= vocab_size would silently wrap in uint16 and index the wrong row.
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise DataError(
                f"tokenizer {self.name!r}: produced id {int(ids.max())} outside [0, vocab_size={self.vocab_size})"
            )
        return ids.astype(token_dtype(self.vocab_size))


def _wrap_bpe(tok: tokenizers.Tokenizer, path: Path) -> Tokenizer:
    eos_id = tok.token_to_id(EOS_TOKEN)
    if eos_id is None:  # only possible for a hand-edited cache file
        raise DataError(f"BPE tokenizer {path}: has no {EOS_TOKEN} token; delete the file to retrain")
    # Key by content: the same BPE trained from identical text elsewhere shares the token caches.
    key = stable_hash("tokenizer", "bpe", tok.to_str(), eos_id, length=20)
    # encode_batch_fast skips offset tracking (tokenizers >= 0.20): same ids, ~25% faster on WikiText-2.
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)

    def encode_batch(lines: list[str]) -> list[list[int]]:
        return [enc.ids for enc in encode(lines, add_special_tokens=False)]

    def decode(ids: list[int]) -> str:
        return tok.decode(ids, skip_special_tokens=False)

    return Tokenizer(
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        eos_id=eos_id,
        name="bpe",
        key=key,
        encode_batch=encode_batch,
        decode=decode,
        backend=tok,
    )


def train_bpe(lines: Sequence[str], vocab_size: int) -> tokenizers.Tokenizer:
    """Train a byte-level BPE (GPT-2 style pre-tokenization) with one special token, ``<eos>``.

    WikiText lines already begin with a space, so no prefix space is added: ``decode(encode(line)) == line``.
    ``<unk>`` in the tokenized files stays ordinary text: the GPT-2 pre-tokenizer splits it into ``" <"``,
    ``"unk"``, ``">"``, so each costs three tokens (about 5% of WikiText-2 train), a price paid for a plain recipe.
    """
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,  # a merge seen once is noise, not vocabulary
        special_tokens=[EOS_TOKEN],
        # All 256 byte symbols up front, so any UTF-8 text (valid/test included) encodes without an unknown token.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer, length=len(lines))
    return tok


def _bpe_path(cfg: DataConfig, cache_dir: Path) -> Path:
    key = stable_hash(
        "bpe", _BPE_RECIPE, source_fingerprint(cfg, "train"), cfg.vocab_size, tokenizers.__version__, length=20
    )
    return Path(cache_dir) / "tokenizers" / f"{key}.json"


def _load_pretrained(name: str) -> Tokenizer:
    import transformers  # heavy import; only pretrained tokenizers need it

    try:
        tok = transformers.AutoTokenizer.from_pretrained(name)
    except Exception as e:  # OSError (missing files), ValueError (unknown class), ...: all "cannot load"
        raise DataError(
            f"tokenizer {name!r}: AutoTokenizer.from_pretrained failed; expected a folder with tokenizer files "
            f"or a hub id ({type(e).__name__}: {e})"
        ) from e
    if tok.eos_token_id is None:
        raise DataError(f"tokenizer {name!r}: has no eos_token; expected one to separate lines")
    backend = getattr(tok, "backend_tokenizer", None)
    # Key by content, not by path: the same tokenizer saved in two places shares one token cache.
    content = backend.to_str() if backend is not None else sorted(tok.get_vocab().items())
    key = stable_hash("tokenizer", type(tok).__name__, content, tok.eos_token_id, length=20)

    def encode_batch(lines: list[str]) -> list[list[int]]:
        return tok(lines, add_special_tokens=False)["input_ids"]

    def decode(ids: list[int]) -> str:
        return tok.decode(ids, clean_up_tokenization_spaces=False)  # verbatim text, as the BPE path

    return Tokenizer(
        vocab_size=len(tok),
        eos_id=int(tok.eos_token_id),
        name=name,
        key=key,
        encode_batch=encode_batch,
        decode=decode,
        backend=tok,
    )


def get_tokenizer(cfg: DataConfig, cache_dir: Path) -> Tokenizer:
    """The tokenizer of ``cfg``: the cached BPE (trained on the train split on first use), or a pretrained one.

    ``cache_dir`` is the cache root; the BPE lives in ``cache_dir/tokenizers/<key>.json``.
    """
    cfg.validate()
    if cfg.tokenizer != "bpe":
        return _load_pretrained(cfg.tokenizer)
    path = _bpe_path(cfg, Path(cache_dir))
    if path.is_file():
        return _wrap_bpe(tokenizers.Tokenizer.from_file(str(path)), path)
    lines = load_split_text(cfg, "train")
    t0 = time.perf_counter()
    tok = train_bpe(lines, cfg.vocab_size)
    log.info(
        "trained BPE (vocab %d) on %d lines in %.1fs -> %s", cfg.vocab_size, len(lines), time.perf_counter() - t0, path
    )
    with atomic_path(path) as tmp:
        tok.save(str(tmp))
    return _wrap_bpe(tok, path)


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


def _cached_split(tok: Tokenizer, cfg: DataConfig, split: Split, root: Path) -> np.ndarray:
    path = _tokens_path(tok, cfg, split, root)
    if not path.is_file():
        lines = load_split_text(cfg, split)
        t0 = time.perf_counter()
        ids = tok.encode_lines(lines)
        log.info("tokenized %s: %d lines -> %d tokens in %.1fs", split, len(lines), ids.size, time.perf_counter() - t0)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, ids)  # to a file handle: given a path, numpy would append ".npy" to the temporary name
    return np.load(path, mmap_mode="r")


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
