"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only WikiText data root: ``$LBW_DATA_DIR``, else ``../shared/data`` beside the repository.

    CI clones the repository next to a copy of ``shared/``; tests never copy these files into the repo.
    """
    root = Path(os.environ.get("LBW_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
    if not (root / "wikitext-2" / "wiki.train.tokens").is_file():
        pytest.skip(
            f"WikiText data not found at {root} (set LBW_DATA_DIR to a folder with wikitext-2/wiki.train.tokens)"
        )
    return root
