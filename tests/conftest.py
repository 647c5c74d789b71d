"""Shared fixtures: the real MovieLens data beside the project, skipped where it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FEDREC_SHARED_DATA", ROOT.parent / "shared" / "data"))
MOVIELENS_SMALL = SHARED_DATA / "ml-latest-small"


@pytest.fixture(scope="session")
def movielens_small() -> Path:
    """The ml-latest-small folder (read-only), or a skip that says where it was looked for."""
    if not (MOVIELENS_SMALL / "ratings.csv").is_file():
        pytest.skip(
            f"MovieLens ml-latest-small not found at {MOVIELENS_SMALL} "
            "(set FEDREC_SHARED_DATA to the folder that holds it)"
        )
    return MOVIELENS_SMALL
