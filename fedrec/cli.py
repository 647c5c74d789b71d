"""The ``fedrec`` command: one subcommand per job, each with ``--help``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fedrec import __version__
from fedrec.shared.data.errors import DataError
from fedrec.shared.data.folder import save_folder
from fedrec.shared.data.spec import SPEC_HELP, load_data
from fedrec.shared.encoder.config import EncoderConfig
from fedrec.shared.evaluation.baselines import BASELINES, BaselineConfig
from fedrec.shared.evaluation.harness import EvaluationConfig
from fedrec.shared.evaluation.run import run_baseline


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for bad input)."""
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (DataError, ValueError) as err:
        print(f"fedrec: error: {err}", file=sys.stderr)
        return 2


def _evaluate(args: argparse.Namespace) -> int:
    model = BaselineConfig(
        name=args.model,
        ease_lambda=args.ease_lambda,
        frozen_last=args.last,
        encoder=EncoderConfig(model=args.encoder, max_length=args.max_length),
    )
    result = run_baseline(
        args.data, model, EvaluationConfig(resamples=args.resamples, seed=args.seed)
    )
    print(result.table())
    if args.json:
        result.write_json(args.json)
        print(f"wrote {args.json}")
    return 0


def _data_describe(args: argparse.Namespace) -> int:
    dataset = load_data(args.data)
    print(dataset.describe())
    for line in dataset.summary.lines():
        print(f"  {line}")
    return 0


def _data_export(args: argparse.Namespace) -> int:
    dataset = load_data(args.data)
    folder = save_folder(dataset, args.out, fmt=args.format)
    print(f"wrote {dataset.describe()} to {folder}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedrec",
        description="Federated, privacy-preserving, text-based recommendation.",
    )
    parser.add_argument("--version", action="version", version=f"fedrec {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    evaluate = commands.add_parser(
        "evaluate",
        help="evaluate a model with the temporal leave-last-out protocol",
        description="Fit a model on training + validation, rank the whole catalog for every "
        "user and report HR@10, nDCG@10, MRR and coverage@10 with 95%% bootstrap intervals.",
    )
    evaluate.add_argument("--data", required=True, metavar="SPEC", help=SPEC_HELP)
    evaluate.add_argument("--model", required=True, choices=BASELINES, help="model to evaluate")
    evaluate.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    evaluate.add_argument(
        "--ease-lambda", type=float, default=100.0, help="EASE's L2 weight (default: 100)"
    )
    evaluate.add_argument(
        "--last", type=int, default=5, help="frozen: history items averaged (default: 5)"
    )
    evaluate.add_argument(
        "--encoder",
        default=EncoderConfig().model,
        help="frozen: encoder, the bundled default, a Hugging Face id or a local folder",
    )
    evaluate.add_argument(
        "--max-length", type=int, default=48, help="frozen: tokens per item text (default: 48)"
    )
    evaluate.add_argument(
        "--resamples", type=int, default=1000, help="bootstrap resamples (default: 1000)"
    )
    evaluate.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    evaluate.set_defaults(run=_evaluate)

    data = commands.add_parser(
        "data", help="inspect or convert data sets", description="Inspect or convert data sets."
    )
    data_commands = data.add_subparsers(title="commands", required=True, metavar="COMMAND")
    describe = data_commands.add_parser(
        "describe",
        help="load and validate a data set and summarise it",
        description="Load and validate a data set; print its size and every row left out.",
    )
    describe.add_argument("data", metavar="SPEC", help=SPEC_HELP)
    describe.set_defaults(run=_data_describe)
    export = data_commands.add_parser(
        "export",
        help="write a data set in fedrec's own format",
        description="Write a data set as items, interactions and texts files "
        "(docs/data-format.md).",
    )
    export.add_argument("data", metavar="SPEC", help=SPEC_HELP)
    export.add_argument("out", type=Path, metavar="DIR", help="folder to write")
    export.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    export.set_defaults(run=_data_export)
    return parser
