"""WikiText text sources: the data root, the files of a split, reading them, and their fingerprints.

:func:`load_split_text` reads one split as a list of lines. ``source: local`` reads a folder under the data root
(:func:`data_root`: ``DataConfig.root`` or ``$LBW_DATA_DIR``) holding ``wiki.{split}.tokens``,
``wiki.{split}.raw`` or Hugging Face parquet shards; ``source: hub`` calls ``datasets.load_dataset``. All
sources give the same lines for the same text: WikiText lines verbatim (leading space included), without the
newline, blank lines dropped. :func:`source_fingerprint` identifies a split's text by content, for cache keys.

Every error about the input is a :class:`DataError` naming the file or folder and what was expected.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from ..cache import file_fingerprint
from ..errors import DataError
from .config import DataConfig

ENV_DATA_DIR = "LBW_DATA_DIR"
"""Environment variable naming the data root when ``DataConfig.root`` is empty."""

Split = Literal["train", "valid", "test"]
SPLITS: tuple[Split, ...] = ("train", "valid", "test")
HF_SPLITS: dict[str, str] = {"train": "train", "valid": "validation", "test": "test"}
"""Our split names -> the Hugging Face ``Salesforce/wikitext`` split names (also the parquet shard prefixes)."""


def data_root(cfg: DataConfig) -> Path:
    """The data root: ``cfg.root`` if set, else ``$LBW_DATA_DIR``, as an absolute path to an existing folder.

    A relative root is resolved against the working directory *now*, where it is read: the absolute path stays
    right after a later ``chdir`` (a test's ``tmp_path``, a worker started elsewhere), the relative one would not.
    """
    if cfg.root:
        root, origin = cfg.root, "data.root"
    else:
        root, origin = os.environ.get(ENV_DATA_DIR, ""), f"${ENV_DATA_DIR}"
        if not root.strip():
            raise DataError(
                f"no data root: set data.root (DataConfig.root) or ${ENV_DATA_DIR} to a folder holding WikiText "
                "folders such as wikitext-2/wiki.train.tokens"
            )
    given = Path(root).expanduser()
    path = given.resolve()
    if not path.is_dir():
        relative = "" if given.is_absolute() else f", relative to the working directory {Path.cwd()}"
        what = "not a folder (a file)" if path.exists() else "not a folder (nothing there)"
        raise DataError(
            f"data root {path} (from {origin}={root!r}{relative}): {what}; expected a folder of WikiText folders"
        )
    return path


def check_split(split: str) -> None:
    """Raise :class:`DataError` unless ``split`` is one of :data:`SPLITS`."""
    if split not in HF_SPLITS:
        raise DataError(f"split {split!r}: expected one of {', '.join(SPLITS)}")


def split_files(cfg: DataConfig, split: Split) -> list[Path]:
    """The local files holding ``split``: ``wiki.{split}.tokens``, else ``wiki.{split}.raw``, else parquet shards."""
    check_split(split)
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
    check_split(split)
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
    check_split(split)
    if cfg.source == "hub":
        out: dict[str, Any] = {"hub": cfg.hub_repo, "config": cfg.hub_config, "split": HF_SPLITS[split]}
        repo = Path(cfg.hub_repo).expanduser()
        if repo.is_dir():
            files = _hub_local_files(repo, cfg.hub_config)
            out["files"] = [dict(file_fingerprint(p), name=str(p.relative_to(repo))) for p in files]
        return out
    return {"local": [file_fingerprint(p) for p in split_files(cfg, split)]}
