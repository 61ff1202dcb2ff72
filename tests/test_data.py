"""Tests of lbw_env.plant's sources, tokenizer and data: every text source, both tokenizer kinds, both caches,
batches and their errors.

Fast by construction: BPE is trained on slices of the shared WikiText files (a few thousand lines, vocab 384)
in a temporary cache; one test reads the whole WikiText-2 train split to check counts against the files.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lbw_env.cache import cache_root
from lbw_env.plant import data, sources, tokenizer
from lbw_env.plant.config import DataConfig
from lbw_env.plant.data import BatchStream, check_data, eval_blocks, load_corpus
from lbw_env.plant.sources import DataError, load_split_text
from lbw_env.plant.tokenizer import get_tokenizer

torch.set_num_threads(1)

VOCAB = 384
TRAIN_LINES = 2000
EVAL_LINES = 400


def head_lines(path: Path, n: int) -> list[str]:
    """The first ``n`` physical lines of a file, newlines included (blank lines too)."""
    with open(path, encoding="utf-8") as f:
        return [line for _, line in zip(range(n), f)]


def expected_lines(raw_lines: list[str]) -> list[str]:
    """The documented contract, computed independently: newline stripped, blank lines dropped."""
    return [line[:-1] if line.endswith("\n") else line for line in raw_lines if line.strip()]


def write_hf_parquet(path: Path, raw_lines: list[str]) -> None:
    """Rows as Hugging Face stores WikiText: non-blank lines verbatim (with "\\n"), blank lines as ""."""
    rows = [line if line.strip() else "" for line in raw_lines]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": rows}), path)


@pytest.fixture(scope="module")
def small_root(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small data root built from the heads of the shared files, in every local layout.

    wikitext-2/       wiki.{train,valid,test}.tokens
    parquet/          train-0000{0,1}-of-00002.parquet (two shards: order matters), validation-*, test-*
    """
    root = tmp_path_factory.mktemp("small_data")
    heads = {
        "train": head_lines(shared_data / "wikitext-2" / "wiki.train.tokens", TRAIN_LINES),
        "valid": head_lines(shared_data / "wikitext-2" / "wiki.valid.tokens", EVAL_LINES),
        "test": head_lines(shared_data / "wikitext-2" / "wiki.test.tokens", EVAL_LINES),
    }
    (root / "wikitext-2").mkdir()
    for split, lines in heads.items():
        (root / "wikitext-2" / f"wiki.{split}.tokens").write_text("".join(lines), encoding="utf-8")
    half = TRAIN_LINES // 2
    write_hf_parquet(root / "parquet" / "train-00000-of-00002.parquet", heads["train"][:half])
    write_hf_parquet(root / "parquet" / "train-00001-of-00002.parquet", heads["train"][half:])
    write_hf_parquet(root / "parquet" / "validation-00000-of-00001.parquet", heads["valid"])
    write_hf_parquet(root / "parquet" / "test-00000-of-00001.parquet", heads["test"])
    return root


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Every test gets its own cache root and a clean in-process memo; nothing is written to ~/.cache."""
    monkeypatch.setenv("LBW_CACHE", str(tmp_path / "cache"))
    data.clear_memo()
    yield
    data.clear_memo()


def small_cfg(root: Path, **kw) -> DataConfig:
    kw.setdefault("train_dir", "wikitext-2")
    kw.setdefault("eval_dir", "wikitext-2")
    kw.setdefault("vocab_size", VOCAB)
    return DataConfig(root=str(root), **kw)


# ----------------------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------------------


def test_local_tokens_lines_follow_the_contract(small_root: Path) -> None:
    cfg = small_cfg(small_root)
    lines = load_split_text(cfg, "train")
    raw = head_lines(small_root / "wikitext-2" / "wiki.train.tokens", TRAIN_LINES)
    assert lines == expected_lines(raw)
    assert 0 < len(lines) < len(raw)  # blank lines really were there, and were dropped
    assert lines[0] == " = Valkyria Chronicles III = "  # leading and trailing space kept, newline gone
    assert not any(line.endswith("\n") or not line.strip() for line in lines)


def test_data_root_falls_back_to_env(small_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sources.ENV_DATA_DIR, str(small_root))
    assert sources.data_root(DataConfig()) == small_root
    assert load_split_text(DataConfig(eval_dir="wikitext-2"), "valid")[0] == " = Homarus gammarus = "


def test_relative_data_root_is_resolved_where_it_is_read(
    small_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``LBW_DATA_DIR=../data`` means relative to the working directory when the root is read; the absolute path
    returned stays right after a later chdir (tests run in tmp_path, workers start elsewhere)."""
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    (tmp_path / "data").symlink_to(small_root)
    monkeypatch.setenv(sources.ENV_DATA_DIR, "../data")
    root = sources.data_root(DataConfig())
    assert root.is_absolute() and root == small_root.resolve()
    monkeypatch.chdir(tmp_path)
    assert load_split_text(DataConfig(root=str(root), eval_dir="wikitext-2"), "valid")[0] == " = Homarus gammarus = "
    monkeypatch.setenv(sources.ENV_DATA_DIR, "../no/such/data")
    with pytest.raises(DataError, match=r"'\.\./no/such/data'.*relative to the working directory"):
        sources.data_root(DataConfig())


def test_local_raw_from_shared_data(shared_data: Path, small_root: Path) -> None:
    raw_file = shared_data / "wikitext-2-raw" / "wiki.valid.raw"
    lines = load_split_text(DataConfig(root=str(shared_data), eval_dir="wikitext-2-raw"), "valid")
    assert lines == expected_lines(raw_file.read_text(encoding="utf-8").split("\n"))
    # The raw file has three lines ending in two spaces (see data/README.md): proof nothing was stripped.
    assert sum(line.endswith("@,@  ") for line in lines) == 3
    tok = get_tokenizer(small_cfg(small_root), cache_root())
    ids = tok.encode_lines(lines[:50])
    assert int((ids == tok.eos_id).sum()) == 50
    assert tok.decode(ids[: np.flatnonzero(ids == tok.eos_id)[0]]) == lines[0]


def test_parquet_shards_give_the_same_text_and_tokens(small_root: Path) -> None:
    text_cfg = small_cfg(small_root)
    pq_cfg = small_cfg(small_root, train_dir="parquet", eval_dir="parquet")
    for split in sources.SPLITS:
        assert load_split_text(pq_cfg, split) == load_split_text(text_cfg, split)
    assert len(sources.split_files(pq_cfg, "train")) == 2
    a, b = load_corpus(text_cfg), load_corpus(pq_cfg)
    # Different files -> BPE trained twice; equal content proves training is deterministic.
    assert a.tokenizer.key == b.tokenizer.key
    for split in sources.SPLITS:
        np.testing.assert_array_equal(getattr(a, split), getattr(b, split))


def make_hub_like_repo(folder: Path, small_root: Path) -> None:
    """A folder laid out like HF Salesforce/wikitext: README.md front-matter `configs:` -> parquet shards."""
    cfg_name = "wikitext-2-raw-v1"
    for split in ("train", "validation", "test"):
        ours = {"validation": "valid"}.get(split, split)
        lines = head_lines(small_root / "wikitext-2" / f"wiki.{ours}.tokens", 300)
        write_hf_parquet(folder / cfg_name / f"{split}-00000-of-00001.parquet", lines)
    data_files = "".join(
        f"  - split: {s}\n    path: {cfg_name}/{s}-00000-of-00001.parquet\n" for s in ("train", "validation", "test")
    )
    readme = f"---\nconfigs:\n- config_name: {cfg_name}\n  data_files:\n{data_files}---\n# WikiText (test copy)\n"
    (folder / "README.md").write_text(readme, encoding="utf-8")


@pytest.fixture
def offline_hf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Offline Hugging Face with a temporary datasets cache (env for subprocesses, attributes for this one)."""
    import datasets

    hf = tmp_path / "hf"
    for var, value in {
        "HF_HOME": hf,
        "HF_DATASETS_CACHE": hf / "datasets",
        "HF_DATASETS_OFFLINE": 1,
        "HF_HUB_OFFLINE": 1,
    }.items():
        monkeypatch.setenv(var, str(value))
    # datasets reads these once, at import; it may already be imported by an earlier test.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", hf / "datasets")
    monkeypatch.setattr(datasets.config, "HF_MODULES_CACHE", hf / "modules")
    monkeypatch.setattr(datasets.config, "DOWNLOADED_DATASETS_PATH", hf / "datasets" / "downloads")
    monkeypatch.setattr(datasets.config, "EXTRACTED_DATASETS_PATH", hf / "datasets" / "downloads" / "extracted")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    return hf


def test_hub_source_through_datasets(tmp_path: Path, small_root: Path, offline_hf: Path) -> None:
    repo = tmp_path / "Salesforce-wikitext"
    make_hub_like_repo(repo, small_root)
    cfg = DataConfig(source="hub", hub_repo=str(repo), hub_config="wikitext-2-raw-v1", vocab_size=VOCAB)
    for split in sources.SPLITS:
        want = expected_lines(head_lines(small_root / "wikitext-2" / f"wiki.{split}.tokens", 300))
        assert load_split_text(cfg, split) == want
    assert list((offline_hf / "datasets").rglob("*.arrow")), "datasets.load_dataset did not run (no arrow cache)"
    corpus = load_corpus(cfg)  # no data root needed for the hub source
    assert int((np.asarray(corpus.valid) == corpus.eos_id).sum()) == len(load_split_text(cfg, "valid"))
    # Editing the local repo must invalidate our token cache (its key fingerprints the repo's files).
    short = head_lines(small_root / "wikitext-2" / "wiki.valid.tokens", 100)
    write_hf_parquet(repo / "wikitext-2-raw-v1" / "validation-00000-of-00001.parquet", short)
    data.clear_memo()
    assert int((np.asarray(load_corpus(cfg).valid) == corpus.eos_id).sum()) == len(expected_lines(short))
    with pytest.raises(DataError, match="no-such-config"):
        load_split_text(DataConfig(source="hub", hub_repo=str(repo), hub_config="no-such-config"), "train")


# ----------------------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------------------


def test_bpe_round_trip_and_line_layout(small_root: Path, shared_data: Path) -> None:
    tok = get_tokenizer(small_cfg(small_root), cache_root())
    assert tok.vocab_size == VOCAB
    assert tok.decode([tok.eos_id]) == "<eos>"
    lines = load_split_text(small_cfg(small_root), "train")[:40]
    japanese = next(line for line in lines if "戦場のヴァルキュリア" in line)  # multi-byte text
    for line in [*lines, japanese, " <unk> , <unk> @-@ x "]:
        assert tok.decode(tok.encode(line)) == line
    ids = tok.encode_lines(lines)
    assert ids.dtype == np.uint16
    # Layout: each line's ids, then one eos, concatenated in order.
    ends = np.cumsum([len(tok.encode(line)) + 1 for line in lines]) - 1
    np.testing.assert_array_equal(np.flatnonzero(ids == tok.eos_id), ends)


def test_bpe_cache_hit_does_not_retrain(small_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = cache_root()
    first = get_tokenizer(small_cfg(small_root), cache)
    assert len(list((cache / "tokenizers").glob("*.json"))) == 1
    assert not list((cache / "tokenizers").glob(".*"))  # no temporary left behind

    def no_training(*args, **kwargs):
        raise AssertionError("BPE retrained despite a cached tokenizer")

    monkeypatch.setattr(tokenizer, "train_bpe", no_training)
    second = get_tokenizer(small_cfg(small_root), cache)
    assert second.key == first.key
    sample = load_split_text(small_cfg(small_root), "valid")[:20]
    np.testing.assert_array_equal(second.encode_lines(sample), first.encode_lines(sample))
    # A different vocabulary is a different cache entry, so it must train (and hit our tripwire).
    with pytest.raises(AssertionError, match="retrained"):
        get_tokenizer(small_cfg(small_root, vocab_size=VOCAB + 64), cache)


def save_pretrained_bpe(small_root: Path, out: Path, eos: bool = True) -> tokenizer.Tokenizer:
    from transformers import PreTrainedTokenizerFast

    bpe = get_tokenizer(small_cfg(small_root), cache_root())
    kwargs = {"eos_token": "<eos>"} if eos else {}
    PreTrainedTokenizerFast(tokenizer_object=bpe.backend, **kwargs).save_pretrained(out)
    return bpe


def test_pretrained_tokenizer_via_save_pretrained(small_root: Path, tmp_path: Path) -> None:
    bpe = save_pretrained_bpe(small_root, tmp_path / "tok")
    cfg = small_cfg(small_root, tokenizer=str(tmp_path / "tok"))
    pre = get_tokenizer(cfg, cache_root())
    assert (pre.vocab_size, pre.eos_id) == (bpe.vocab_size, bpe.eos_id)
    line = load_split_text(cfg, "train")[3]
    assert pre.decode(pre.encode(line)) == line
    # Through load_corpus the pretrained path must produce exactly the BPE's token arrays.
    a, b = load_corpus(cfg), load_corpus(small_cfg(small_root))
    for split in sources.SPLITS:
        np.testing.assert_array_equal(getattr(a, split), getattr(b, split))


def test_tokenizers_pickle(small_root: Path, tmp_path: Path) -> None:
    """No closures inside: the tokenizer (and the env that holds it) pickles, and encodes the same afterwards."""
    line = load_split_text(small_cfg(small_root), "train")[5]
    bpe = get_tokenizer(small_cfg(small_root), cache_root())
    save_pretrained_bpe(small_root, tmp_path / "tok")
    pre = get_tokenizer(small_cfg(small_root, tokenizer=str(tmp_path / "tok")), cache_root())
    for tok in (bpe, pre):
        copy = pickle.loads(pickle.dumps(tok))
        assert (copy.key, copy.kind, copy.vocab_size) == (tok.key, tok.kind, tok.vocab_size)
        assert copy.encode(line) == tok.encode(line) and copy.decode(copy.encode(line)) == line


def test_pretrained_tokenizer_errors_name_the_path(small_root: Path, tmp_path: Path) -> None:
    empty = tmp_path / "not-a-tokenizer"
    empty.mkdir()
    with pytest.raises(DataError, match="not-a-tokenizer"):
        get_tokenizer(small_cfg(small_root, tokenizer=str(empty)), cache_root())
    save_pretrained_bpe(small_root, tmp_path / "no-eos", eos=False)
    with pytest.raises(DataError, match=r"no-eos.*eos_token"):
        get_tokenizer(small_cfg(small_root, tokenizer=str(tmp_path / "no-eos")), cache_root())


# ----------------------------------------------------------------------------------------------------------
# Token cache and corpus
# ----------------------------------------------------------------------------------------------------------


def test_token_cache_written_once_and_reused(small_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = small_cfg(small_root)
    corpus = load_corpus(cfg)
    assert load_corpus(cfg) is corpus  # in-process memo: a reset costs nothing
    files = sorted((cache_root() / "tokens").rglob("*"))
    npys = [f for f in files if f.suffix == ".npy"]
    assert sorted(f.name for f in npys) == ["test.npy", "train.npy", "valid.npy"]
    assert not [f for f in files if f.name.startswith(".")]  # no temporaries left
    for split in sources.SPLITS:
        arr = getattr(corpus, split)
        assert isinstance(arr, np.memmap) and arr.dtype == np.uint16 and not arr.flags.writeable
        assert int((arr == corpus.eos_id).sum()) == len(load_split_text(cfg, split))

    data.clear_memo()

    def no_encoding(self, lines):
        raise AssertionError("re-tokenized despite a cached token array")

    monkeypatch.setattr(tokenizer.Tokenizer, "encode_lines", no_encoding)
    again = load_corpus(cfg)
    assert again is not corpus
    for split in sources.SPLITS:
        np.testing.assert_array_equal(getattr(again, split), getattr(corpus, split))


def test_token_cache_write_is_atomic(small_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = small_cfg(small_root)
    real_save = np.save

    def crash_midway(f, arr):
        f.write(b"\x93NUMPY partial")  # a torn write, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        load_corpus(cfg)
    tokens_dir = cache_root() / "tokens"
    assert not [f for f in tokens_dir.rglob("*") if f.is_file()], "a partial token file was left in the cache"
    monkeypatch.setattr(np, "save", real_save)
    corpus = load_corpus(cfg)
    assert corpus.train.size > TRAIN_LINES


def test_check_data_names_a_split_too_short_for_a_run(small_root: Path, tmp_path: Path) -> None:
    """The size checks a run would otherwise fail on mid-way: a batch of train blocks, one evaluation block."""
    corpus = check_data(small_cfg(small_root, seq_len=32, batch_size=4))
    assert corpus.train.size > 4 * 33
    with pytest.raises(DataError, match=r"train file .*wiki\.train\.tokens: 100 tokens \(data\.max_train_tokens=100\)"):
        check_data(small_cfg(small_root, seq_len=32, batch_size=4, max_train_tokens=100))
    short = tmp_path / "short"
    shutil.copytree(small_root / "wikitext-2", short / "d")
    (short / "d" / "wiki.valid.tokens").write_text(" = A = \n two words \n", encoding="utf-8")
    with pytest.raises(DataError, match=r"valid file .*wiki\.valid\.tokens: \d+ tokens make 0 blocks.*one evaluation"):
        check_data(small_cfg(short, train_dir="d", eval_dir="d", seq_len=32, batch_size=4))


def test_max_train_tokens_is_a_view(small_root: Path) -> None:
    full = load_corpus(small_cfg(small_root))
    cut = load_corpus(small_cfg(small_root, max_train_tokens=1000))
    assert cut.train.size == 1000 and np.shares_memory(cut.train, full.train)
    assert cut.valid is full.valid


def test_full_wikitext2_counts(shared_data: Path) -> None:
    """The whole WikiText-2 train split: every non-blank line becomes one <eos>, and BPE splits words."""
    cfg = DataConfig(root=str(shared_data), eval_dir="wikitext-2", vocab_size=2048)
    corpus = load_corpus(cfg)
    for split in sources.SPLITS:
        with open(shared_data / "wikitext-2" / f"wiki.{split}.tokens", encoding="utf-8") as f:
            non_blank = sum(1 for line in f if line.strip())
        assert int((np.asarray(getattr(corpus, split)) == corpus.eos_id).sum()) == non_blank
    # 2,088,628 word tokens incl. one <eos> per line (blank ones too); a 2k BPE needs more pieces than words.
    assert corpus.train.size > 2_088_628
    assert corpus.vocab_size == 2048


# ----------------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------------

SEQ = 8


def arange_tokens(n_blocks: int) -> np.ndarray:
    """Tokens equal to their position, so a block's start index is readable from its first token."""
    return np.arange(n_blocks * SEQ + 1, dtype=np.uint32)


def block_ids(batch: torch.Tensor) -> list[int]:
    return (batch[:, 0] // SEQ).tolist()


def test_batch_shape_and_content() -> None:
    tokens = arange_tokens(10)
    stream = BatchStream(tokens, SEQ, 3, seed=0)
    batch = stream.next()
    assert batch.dtype == torch.int64 and batch.shape == (3, SEQ + 1)
    assert stream.tokens_per_batch == 3 * SEQ and stream.n_blocks == 10
    for row in batch:  # contiguous text, starting at a multiple of seq_len
        assert row[0] % SEQ == 0
        assert torch.equal(row, torch.arange(int(row[0]), int(row[0]) + SEQ + 1))
    # Epoch order is pinned to the documented generator.
    assert block_ids(batch) == np.random.default_rng([0, 0]).permutation(10)[:3].tolist()


def test_batches_are_seeded() -> None:
    tokens = arange_tokens(10)

    def run(seed: int) -> list[list[int]]:
        stream = BatchStream(tokens, SEQ, 4, seed)
        return [block_ids(stream.next()) for _ in range(8)]  # crosses three epochs

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_each_block_once_per_epoch() -> None:
    stream = BatchStream(arange_tokens(10), SEQ, 3, seed=5)
    drawn = [b for _ in range(10) for b in block_ids(stream.next())]  # 30 draws = 3 epochs, batches straddle
    epochs = [drawn[i : i + 10] for i in range(0, 30, 10)]
    for order in epochs:
        assert sorted(order) == list(range(10))
    assert epochs[0] != epochs[1]  # a fresh permutation each epoch
    assert stream.state() == {"epoch": 2, "pos": 10}


def test_state_round_trip_continues_exactly() -> None:
    tokens = arange_tokens(10)
    stream = BatchStream(tokens, SEQ, 4, seed=3)
    for _ in range(4):  # stop mid-epoch
        stream.next()
    state = json.loads(json.dumps(stream.state()))  # plain ints survive a checkpoint file
    assert all(type(v) is int for v in state.values())
    expected = [stream.next() for _ in range(5)]
    resumed = BatchStream(tokens, SEQ, 4, seed=3)
    resumed.set_state(state)
    for want in expected:
        assert torch.equal(resumed.next(), want)


def test_too_few_blocks_is_an_error() -> None:
    with pytest.raises(DataError, match="batch_size=4"):
        BatchStream(arange_tokens(3), SEQ, 4, seed=0)


def test_eval_blocks_fixed_and_spread() -> None:
    tokens = arange_tokens(100)
    a, b = eval_blocks(tokens, SEQ, 10), eval_blocks(tokens, SEQ, 10)
    assert torch.equal(a, b) and a.shape == (10, SEQ + 1) and a.dtype == torch.int64
    assert block_ids(a) == list(range(0, 100, 10))  # evenly spread over the whole split
    assert block_ids(eval_blocks(tokens, SEQ, 500)) == list(range(100))  # short split: all blocks
    assert eval_blocks(arange_tokens(1), SEQ, 64).shape == (1, SEQ + 1)
    with pytest.raises(DataError, match="at least"):
        eval_blocks(np.arange(SEQ, dtype=np.uint16), SEQ, 4)


# ----------------------------------------------------------------------------------------------------------
# Bad input: the error names the thing and what was expected
# ----------------------------------------------------------------------------------------------------------


def test_missing_data_root_names_the_env_var(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(sources.ENV_DATA_DIR, raising=False)
    with pytest.raises(DataError, match=r"\$LBW_DATA_DIR") as e:
        load_split_text(DataConfig(), "train")
    assert "data.root" in str(e.value)
    monkeypatch.setenv(sources.ENV_DATA_DIR, str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"nowhere.*\$LBW_DATA_DIR.*not a folder"):
        sources.data_root(DataConfig())


def test_missing_folder_is_named(small_root: Path) -> None:
    with pytest.raises(DataError, match=r"wikitext-7.*data\.eval_dir"):
        load_split_text(small_cfg(small_root, eval_dir="wikitext-7"), "test")


def test_no_matching_file_lists_the_names(shared_data: Path) -> None:
    # The raw WikiText-2 train file is not in the shared data (see its README): a real "nothing here" folder.
    with pytest.raises(DataError) as e:
        load_split_text(DataConfig(root=str(shared_data), train_dir="wikitext-2-raw"), "train")
    for name in ("wikitext-2-raw", "wiki.train.tokens", "wiki.train.raw", "train-*.parquet"):
        assert name in str(e.value)


@pytest.mark.parametrize("content", [b"", b" \n \n\n"])
def test_empty_file_is_named(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "wiki.valid.tokens").write_bytes(content)
    with pytest.raises(DataError, match=r"wiki\.valid\.tokens.*empty or only blank"):
        load_split_text(DataConfig(root=str(tmp_path), eval_dir="d"), "valid")


def test_non_utf8_file_names_file_and_offset(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    content = " fine \n \xe9t\xe9 \n".encode("latin-1")  # Latin-1, as some old copies are
    (tmp_path / "d" / "wiki.test.raw").write_bytes(content)
    with pytest.raises(DataError, match=rf"wiki\.test\.raw.*not UTF-8.*offset {content.index(0xE9)}\b"):
        load_split_text(DataConfig(root=str(tmp_path), eval_dir="d"), "test")


def test_parquet_without_text_column_is_named(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    pq.write_table(pa.table({"content": ["a"]}), tmp_path / "d" / "test-00000-of-00001.parquet")
    with pytest.raises(DataError, match=r"test-00000-of-00001\.parquet.*'text'"):
        load_split_text(DataConfig(root=str(tmp_path), eval_dir="d"), "test")
