"""Data specs as users write them on the command line: ``demo``, ``movielens:DIR`` or a folder."""

from __future__ import annotations

from pathlib import Path

from fedrec.shared.data.dataset import Dataset
from fedrec.shared.data.errors import DataError
from fedrec.shared.data.folder import load_folder
from fedrec.shared.data.movielens import load_movielens

SPEC_HELP = (
    "'demo' (built-in demo data; 'demo:SEED' for another seed), 'movielens:DIR' (GroupLens "
    "layout) or a folder in fedrec's format (docs/data-format.md)"
)


def load_data(spec: str) -> Dataset:
    """Load the data set that ``spec`` names (see ``SPEC_HELP``)."""
    kind, _, rest = spec.partition(":")
    if kind == "demo":
        from fedrec.shared.data.demo import DemoConfig, generate_demo

        if Path(spec).is_dir():
            raise DataError(
                f"{spec!r} names the built-in demo data, and there is also a folder {spec!r}: "
                f"write ./{spec} for the folder"
            )
        if spec == "demo":
            return generate_demo()
        if not (rest.isascii() and rest.isdigit()):
            raise DataError(f"demo seed must be a non-negative integer, got {rest!r}")
        return generate_demo(DemoConfig(seed=int(rest)))
    if kind == "movielens":
        if not rest:
            raise DataError("movielens needs a folder: movielens:DIR")
        return load_movielens(Path(rest).expanduser())
    path = Path(spec).expanduser()
    if path.is_dir():
        return load_folder(path)
    if path.exists():
        raise DataError(f"data spec {spec!r} is a file, not a folder: use {SPEC_HELP}")
    if ":" not in spec:
        raise DataError(f"no folder {spec!r} (and no data spec of that name): use {SPEC_HELP}")
    raise DataError(f"unknown data spec {spec!r}: use {SPEC_HELP}")
