"""Tokenizers: a byte-level BPE trained on the train split and cached, or a pretrained tokenizer.

:func:`get_tokenizer` returns a :class:`Tokenizer`: a byte-level BPE trained on the train split and cached as
JSON (keyed by the content of the train text, the vocabulary size and the ``tokenizers`` version), or a
pretrained tokenizer (``AutoTokenizer.from_pretrained``). ``encode_lines`` appends ``eos_id`` after each line,
so documents are separated the way WikiText's ``<eos>`` convention expects. Both kinds are keyed by their
content (:attr:`Tokenizer.key`), so token caches follow the tokenizer, not the path it was loaded from.

The cached BPE file carries a sha256 digest (:mod:`lbw_env.cache`): a truncated or edited file is detected,
logged and retrained. A :class:`Tokenizer` holds only its backend and plain values (no closures), so it pickles
with the env that uses it.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tokenizers

from ..cache import stable_hash, store_file, verified_file
from .config import DataConfig
from .sources import DataError, load_split_text, source_fingerprint

log = logging.getLogger(__name__)

EOS_TOKEN = "<eos>"
"""The one special token of the trained BPE, appended after every line."""

# Bump when the BPE recipe changes, so stale cache entries are never reused.
_BPE_RECIPE = 1
# Lines per encode_batch call: large enough to keep the Rust side busy, small enough that the per-line
# Python objects of WikiText-103's 1.8M-line train split never all exist at once.
_ENCODE_CHUNK = 16384


def token_dtype(vocab_size: int) -> np.dtype[Any]:
    """The narrowest unsigned dtype for token ids: uint16 up to 65,535 entries, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


class Tokenizer:
    """A thin wrapper over a ``tokenizers.Tokenizer`` (``kind="bpe"``) or a ``transformers`` tokenizer.

    Encoding dispatches on :attr:`kind` in methods rather than through stored closures, so that the wrapper (and
    an env holding it) pickles: both backends pickle themselves.

    Attributes:
        vocab_size: number of ids (every id is ``< vocab_size``); the model's embedding size.
        eos_id: id appended after every line.
        name: ``"bpe"`` or the pretrained path / hub id.
        key: hash of the tokenizer's content; token caches are keyed by it.
        kind: ``"bpe"`` (a ``tokenizers.Tokenizer``) or ``"pretrained"`` (a ``transformers`` tokenizer).
        backend: the wrapped tokenizer.
    """

    def __init__(
        self, *, vocab_size: int, eos_id: int, name: str, key: str, kind: Literal["bpe", "pretrained"], backend: Any
    ) -> None:
        self.vocab_size = vocab_size
        self.eos_id = eos_id
        self.name = name
        self.key = key
        self.kind = kind
        self.backend = backend

    def _encode_batch(self, lines: list[str]) -> list[list[int]]:
        if self.kind == "bpe":
            # encode_batch_fast skips offset tracking (tokenizers >= 0.20): same ids, ~25% faster on WikiText-2.
            encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
            return [enc.ids for enc in encode(lines, add_special_tokens=False)]
        return self.backend(lines, add_special_tokens=False)["input_ids"]

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.name!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id}, key={self.key!r})"

    def encode(self, text: str) -> list[int]:
        """Ids of one string, without special tokens."""
        return self._encode_batch([text])[0]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of a sequence of ids (special tokens such as ``<eos>`` are kept)."""
        plain = [int(i) for i in ids]
        if self.kind == "bpe":
            return self.backend.decode(plain, skip_special_tokens=False)
        return self.backend.decode(plain, clean_up_tokenization_spaces=False)  # verbatim text, as the BPE path

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
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    return Tokenizer(vocab_size=vocab_size, eos_id=eos_id, name="bpe", key=key, kind="bpe", backend=tok)


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
    return Tokenizer(
        vocab_size=len(tok), eos_id=int(tok.eos_token_id), name=name, key=key, kind="pretrained", backend=tok
    )


def get_tokenizer(cfg: DataConfig, cache_dir: Path) -> Tokenizer:
    """The tokenizer of ``cfg``: the cached BPE (trained on the train split on first use), or a pretrained one.

    ``cache_dir`` is the cache root; the BPE lives in ``cache_dir/tokenizers/<key>.json`` (+ ``.json.sha256``),
    verified on every load: a file that does not match its digest is logged, retrained and replaced.
    """
    cfg.validate()
    if cfg.tokenizer != "bpe":
        return _load_pretrained(cfg.tokenizer)
    path = _bpe_path(cfg, Path(cache_dir))
    if verified_file(path, "BPE tokenizer"):
        try:
            return _wrap_bpe(tokenizers.Tokenizer.from_file(str(path)), path)
        except Exception as e:  # the digest matched, so the file is as written: a tokenizers version mismatch
            raise DataError(
                f"BPE tokenizer {path}: unreadable by tokenizers {tokenizers.__version__} ({e}); delete it to retrain"
            ) from e
    lines = load_split_text(cfg, "train")
    t0 = time.perf_counter()
    tok = train_bpe(lines, cfg.vocab_size)
    log.info(
        "trained BPE (vocab %d) on %d lines in %.1fs -> %s", cfg.vocab_size, len(lines), time.perf_counter() - t0, path
    )
    store_file(path, lambda tmp: tok.save(str(tmp)), "BPE tokenizer")
    return _wrap_bpe(tok, path)
