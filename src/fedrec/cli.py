"""The ``fedrec`` command: one subcommand per job, each with ``--help``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedrec import __version__
from fedrec.benchmarks import BenchmarkReport
from fedrec.benchmarks.dp_step import run_dp_step_benchmark
from fedrec.benchmarks.feedback import run_feedback_benchmark
from fedrec.benchmarks.rank import run_rank_benchmark
from fedrec.benchmarks.reembed import run_reembed_benchmark
from fedrec.shared.data.errors import DataError
from fedrec.shared.data.folder import save_folder
from fedrec.shared.data.spec import SPEC_HELP, load_data
from fedrec.shared.encoder.config import EncoderConfig
from fedrec.shared.evaluation.baselines import BASELINES, BaselineConfig
from fedrec.shared.evaluation.harness import EvaluationConfig, EvaluationResult
from fedrec.shared.evaluation.run import run_baseline, run_central
from fedrec.shared.files import write_json
from fedrec.shared.model.network import ModelConfig
from fedrec.shared.model.training import TrainConfig

if TYPE_CHECKING:
    from fedrec.shared.federated.settings import FederationSettings


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for bad input)."""
    args = _parser().parse_args(argv)
    try:
        _check_json_path(getattr(args, "json", None))
        return int(args.run(args))
    except (DataError, ValueError, OSError) as err:  # OSError: files, and the encoder's folder
        print(f"fedrec: error: {err}", file=sys.stderr)
        return 2
    except MemoryError as err:
        print(f"fedrec: error: not enough memory for what was asked ({err})", file=sys.stderr)
        return 2


def _check_json_path(path: Path | None) -> None:
    """Fail before the work when ``--json PATH`` cannot be written."""
    if path is None:
        return
    if path.is_dir():
        raise ValueError(f"--json {path}: is a folder, not a file")
    if not path.parent.is_dir():
        raise ValueError(f"--json {path}: no folder {path.parent}")
    try:  # a real file, as write_json writes it: os.access trusts root and special folders
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}."):
            pass
    except OSError as err:
        raise ValueError(f"--json {path}: cannot write in {path.parent} ({err.strerror})") from None


#: ``fedrec evaluate``'s options that only one model takes: destination, flag, model.
MODEL_OPTIONS = (
    ("ease_lambda", "--ease-lambda", "ease"),
    ("last", "--last", "frozen"),
    ("encoder", "--encoder", "frozen"),
    ("max_length", "--max-length", "frozen"),
    ("center", "--center", "frozen"),
)


def _evaluate(args: argparse.Namespace) -> int:
    for name, flag, owner in MODEL_OPTIONS:
        if getattr(args, name) is not None and args.model != owner:
            raise ValueError(f"{flag} applies to --model {owner} only, not {args.model}")
    defaults = BaselineConfig(args.model)
    model = BaselineConfig(
        name=args.model,
        ease_lambda=defaults.ease_lambda if args.ease_lambda is None else args.ease_lambda,
        frozen_last=defaults.frozen_last if args.last is None else args.last,
        frozen_center=bool(args.center),
        encoder=EncoderConfig(
            model=defaults.encoder.model if args.encoder is None else args.encoder,
            max_length=defaults.encoder.max_length if args.max_length is None else args.max_length,
        ),
    )
    result = run_baseline(
        args.data, model, EvaluationConfig(resamples=args.resamples, seed=args.seed)
    )
    print(result.table())
    _write_json(result, args.json)
    return 0


def _train(args: argparse.Namespace) -> int:
    if not args.central:
        raise ValueError("only --central training is available from this command for now")
    training = TrainConfig(
        epochs=args.epochs,
        batch_users=args.batch_users,
        learning_rate=args.learning_rate,
        seed=args.seed,
        progress=True,
        trained=args.trained,
    )
    result, recommender = run_central(
        args.data,
        ModelConfig(
            hidden_dim=args.hidden, item_rank=args.item_rank, center_features=args.center_features
        ),
        training,
        EncoderConfig(max_length=args.max_length),
        EvaluationConfig(resamples=args.resamples, seed=args.seed),
    )
    if recommender.log is not None:
        print(
            f"trained in {recommender.log.seconds:.0f} s; loss per epoch: "
            + ", ".join(f"{loss:.3f}" for loss in recommender.log.losses)
        )
    print(result.table())
    _write_json(result, args.json)
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from fedrec.server.federation import read_metrics
    from fedrec.shared.federated.local import PrivacyConfig
    from fedrec.shared.federated.user_level import UserPrivacyConfig
    from fedrec.simulations.run import simulate

    # --set pairs apply last, but the data set's defaults depend on whether DP is on
    sets = _run_config_values(args.overrides)
    privacy = PrivacyConfig(
        enabled=sets.get("dp-enabled", not args.no_dp) is not False,
        distributed=sets.get("dp-distributed", args.distributed_dp) is True,
        target_epsilon=args.target_epsilon,
        delta=args.delta,
        accountant=args.accountant,
    )
    user_privacy = UserPrivacyConfig(
        enabled=sets.get("user-dp-enabled", args.user_dp) is True,
        target_epsilon=args.user_epsilon,
        delta=args.delta,
    )
    trained = {} if args.trained is None else {"local-trained": args.trained}
    strategy = {} if args.strategy is None else {"strategy": args.strategy}
    secure = {"secure_aggregation": True} if args.secure_aggregation else {}
    settings = _settings(
        args,
        trained,
        **strategy,
        **secure,
        user_privacy=user_privacy,
        out=str(args.out),
        seed=args.seed,
        privacy=privacy,
    )
    summary = simulate(settings)
    metrics = summary["metrics"]
    epsilon = summary["epsilon_max"]
    spent = "record-level DP off" if not settings.privacy.enabled else "none reported"
    print(
        f"{settings.devices} devices, {settings.rounds} rounds in {summary['wall_s']:.0f} s: "
        f"HR@10 {metrics['hr@10']:.4f}, nDCG@10 {metrics['ndcg@10']:.4f}, epsilon max "
        f"{spent if epsilon is None else f'{epsilon:.2f}'}, upload per device and round "
        f"{summary['bytes_up_per_device_round'] / 1e6:.2f} MB"
    )
    print(f"wrote {args.out}/metrics.jsonl and {args.out}/summary.json")
    return _report_failures(read_metrics(args.out), args.out)


def _report_failures(rounds: list[dict[str, Any]], out: Path) -> int:
    """Warn about rounds that left the model as it was; 1 when every device failed in every
    round (the federation trained nothing), else 0."""
    unapplied = [r["round"] for r in rounds if not r["applied"]]
    if unapplied:
        failed = sum(r["failed"] for r in rounds)
        dropped = sum(r["dropped"] for r in rounds)
        print(
            f"fedrec: warning: rounds {unapplied} changed nothing ({failed} failed device "
            f"rounds, {dropped} dropped updates in all); see {out}/metrics.jsonl and the log",
            file=sys.stderr,
        )
    if rounds and all(r["devices"] and r["failed"] == r["devices"] for r in rounds):
        print("fedrec: error: every device failed in every round", file=sys.stderr)
        return 1
    return 0


def _privacy_report(args: argparse.Namespace) -> int:
    from fedrec.server.privacy_report import PLOTS, REPORT_JSON, REPORT_MD, privacy_report

    run = privacy_report(args.run_dir, tuple(args.compare))
    record, user = run.record_level, run.user_level
    if record is not None:
        print(
            f"record-level: epsilon max {record['epsilon_max']:.4f}, median "
            f"{record['epsilon_median']:.4f} at delta {record['delta']} ({record['accountant']})"
        )
    if user is not None:
        print(f"user-level: epsilon {user['epsilon']:.4f} at delta {user['delta']}")
    print(f"wrote {', '.join(str(args.run_dir / n) for n in (REPORT_JSON, REPORT_MD, *PLOTS))}")
    return 0


def _privacy_study(args: argparse.Namespace) -> int:
    from fedrec.simulations.study import privacy_study

    privacy_study(_settings(args), args.out)
    print((args.out / "study.md").read_text(encoding="utf-8"))
    return 0


def _privacy_audit(args: argparse.Namespace) -> int:
    from fedrec.simulations.audit import run_audit

    base = _settings(args, canaries=args.canaries, canary_repeats=args.repeats)
    for name, found in run_audit(base, args.out).items():
        print(
            f"{name}: membership AUC {found['auc']:.3f}, mean rank planted "
            f"{found['planted_mean_rank']:.0f}, controls {found['control_mean_rank']:.0f}"
        )
    print(f"wrote {args.out}/audit.json and a privacy report in each run folder")
    return 0


def _privacy_signal(args: argparse.Namespace) -> int:
    from fedrec.simulations.dp_signal import HEADER, dp_signal

    settings = _settings(args)
    results = dp_signal(settings, args.trained, per_device=args.per_device, seed=args.seed)
    print(
        f"{settings.devices} devices, {settings.sampled_devices} a round, {settings.rounds} "
        f"rounds, noise planned for {settings.planned_participations}; noise norm / signal "
        "norm of a device's round (median), of a round's average and of the whole run:"
    )
    print(HEADER)
    for result in results:
        print(result.line())
    if args.json:
        rows = [dataclasses.asdict(result) for result in results]
        write_json(args.json, rows)
    return 0


def _update_norms(args: argparse.Namespace) -> int:
    from fedrec.shared.federated.local import PrivacyConfig
    from fedrec.shared.federated.user_level import UserPrivacyConfig
    from fedrec.simulations.update_norms import update_norms

    # the devices of a user-level run: no record-level DP, training USER_DP_TRAINED by default
    trained = {} if args.trained is None else {"local-trained": args.trained}
    settings = _settings(
        args,
        trained,
        privacy=PrivacyConfig(enabled=False),
        user_privacy=UserPrivacyConfig(enabled=True),
    )
    result = update_norms(settings, args.sample, args.clip, seed=args.seed)
    print("\n".join(result.lines()))
    if args.json:
        write_json(args.json, dataclasses.asdict(result))
    return 0


def _pooled(args: argparse.Namespace) -> int:
    from fedrec.shared.federated.local import PrivacyConfig
    from fedrec.simulations.pooled import pooled_optimizer, train_pooled

    privacy = PrivacyConfig(
        enabled=not args.no_dp, target_epsilon=args.target_epsilon, delta=args.delta
    )
    local = {
        "local-epochs": args.epochs,
        "local-batch-size": args.batch_size,
        **pooled_optimizer(privacy.enabled, args.optimizer),
    }
    if args.learning_rate is not None:
        local["local-learning-rate"] = args.learning_rate
    settings = _settings(args, local, privacy=privacy, seed=args.seed)
    result = train_pooled(settings, resamples=args.resamples, device=args.device)
    print(result.evaluation.table())
    dp = (
        f"noise multiplier {result.noise_multiplier:.4f}, epsilon {result.epsilon:.4f} at "
        f"delta {result.delta}"
        if result.epsilon is not None
        else "no DP"
    )
    print(
        f"{result.examples:,} pooled examples of {settings.devices} devices, loss "
        f"{result.loss:.4f}, {result.steps} steps at sampling rate {result.sample_rate:.5f}, "
        f"{dp}; {result.wall_s:.0f} s"
    )
    if args.json:
        write_json(args.json, result.to_json())
        print(f"wrote {args.json}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    options = {name: getattr(args, name) for name in args.options}
    result = args.benchmark(n_items=args.items, seed=args.seed, **options)
    print(result.table())
    _write_json(result, args.json)
    return 0


def _write_json(result: EvaluationResult | BenchmarkReport, path: Path | None) -> None:
    if path:
        result.write_json(path)
        print(f"wrote {path}")


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


def _federation_arguments(parser: argparse.ArgumentParser, rounds: bool = True) -> None:
    """--data, --devices, --rounds (unless ``rounds`` is False) and --set of a federation
    (defaults per data set)."""
    parser.add_argument("--data", default="demo", metavar="SPEC", help=SPEC_HELP)
    parser.add_argument(
        "--devices", type=int, help="virtual devices, one per user (default: per data set)"
    )
    if rounds:
        parser.add_argument("--rounds", type=int, help="rounds (default: per data set)")
    else:
        parser.set_defaults(rounds=None)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="KEY=VALUE",
        help="any key of the run config ([tool.flwr.app.config], e.g. local-batch-size=32), "
        "applied after every other flag; repeatable",
    )


def _settings(
    args: argparse.Namespace, overrides: dict[str, Any] | None = None, **fields: Any
) -> FederationSettings:
    """The federation of --data (its defaults), --devices, --rounds and ``fields``, then
    ``overrides`` and the --set pairs (run-config keys)."""
    from fedrec.shared.federated.settings import FederationSettings

    given = {k: v for k, v in (("devices", args.devices), ("rounds", args.rounds)) if v is not None}
    settings = FederationSettings.for_data(args.data, **given, **fields)
    pairs = {**(overrides or {}), **_run_config_values(args.overrides)}
    return settings.with_run_config(pairs) if pairs else settings


def _seed(text: str) -> int:
    """--seed's value: an integer in [0, MAX_SEED] (numpy's generators take no negative seed,
    and devices derive theirs from the run's)."""
    from fedrec.shared.federated.settings import MAX_SEED

    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if not 0 <= seed <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, {MAX_SEED}], got {text!r}")
    return seed


def _run_config_values(pairs: list[str]) -> dict[str, Any]:
    """--set's KEY=VALUE pairs; a VALUE is true or false, an int, a float, else text."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, equals, text = pair.partition("=")
        if not equals or not key.strip():
            raise ValueError(f"--set takes KEY=VALUE, got {pair!r}")
        if key.strip() == "out":
            raise ValueError(f"--set {pair}: give the run folder with --out")
        if key.strip() == "data":
            raise ValueError(f"--set {pair}: give the data with --data, which picks its defaults")
        values[key.strip()] = _literal(text.strip())
    return values


def _literal(text: str) -> bool | int | float | str:
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


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
    evaluate.add_argument("--ease-lambda", type=float, help="ease: L2 weight (default: 100)")
    evaluate.add_argument("--last", type=int, help="frozen: history items averaged (default: 5)")
    evaluate.add_argument(
        "--encoder",
        help="frozen: encoder, the bundled default, a Hugging Face id or a local folder",
    )
    evaluate.add_argument(
        "--max-length", type=int, help="frozen: tokens per item text (default: 48)"
    )
    evaluate.add_argument(
        "--center",
        action="store_const",
        const=True,
        help="frozen: centre the item embeddings on the catalog's mean (docs/model.md)",
    )
    evaluate.add_argument(
        "--resamples", type=int, default=1000, help="bootstrap resamples (default: 1000)"
    )
    evaluate.add_argument("--seed", type=_seed, default=0, help="bootstrap seed (default: 0)")
    evaluate.set_defaults(run=_evaluate)

    train = commands.add_parser(
        "train",
        help="train the recommender and evaluate it",
        description="Train the LSTM recommender on all training + validation data in one "
        "place (--central: no federation, no privacy; the upper bound) and evaluate it with "
        "the same protocol and JSON as 'fedrec evaluate'.",
    )
    train.add_argument("--central", action="store_true", help="train in one place")
    train.add_argument("--data", required=True, metavar="SPEC", help=SPEC_HELP)
    train.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    defaults = TrainConfig()
    train.add_argument("--epochs", type=int, default=defaults.epochs)
    train.add_argument("--batch-users", type=int, default=defaults.batch_users)
    train.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    train.add_argument("--hidden", type=int, default=ModelConfig().hidden_dim, help="LSTM size")
    train.add_argument(
        "--item-rank",
        type=int,
        default=ModelConfig().item_rank,
        help="rank of the item tower's trainable part (0: the whole linear map)",
    )
    train.add_argument(
        "--center-features",
        action="store_true",
        help="centre the encoder's features on the catalog's mean (docs/model.md)",
    )
    train.add_argument(
        "--max-length",
        type=int,
        default=EncoderConfig().max_length,
        help="tokens per text for the encoder",
    )
    train.add_argument(
        "--trained",
        default=defaults.trained,
        metavar="PARTS",
        help="parts trained: 'all' or module paths such as 'items,users.recency'",
    )
    train.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    train.add_argument("--seed", type=_seed, default=0)
    train.set_defaults(run=_train)

    simulate = commands.add_parser(
        "simulate",
        help="run a federation of virtual devices",
        description="Run a federation of virtual devices, one per user, through Flower's "
        "simulation engine with DP-SGD on each device; writes OUT/metrics.jsonl (one line per "
        "round) and OUT/summary.json. Rerun with the same --out to resume after a crash.",
    )
    _federation_arguments(simulate)
    simulate.add_argument("--out", type=Path, required=True, help="run folder")
    simulate.add_argument(
        "--strategy", choices=["fedavg", "fedadam"], help="(default: per data set and DP)"
    )
    simulate.add_argument(
        "--no-dp",
        action="store_true",
        help="train without DP-SGD, with the data set's defaults for that (on MovieLens: "
        "FedAdam over local SGD, 100 rounds)",
    )
    simulate.add_argument(
        "--distributed-dp",
        action="store_true",
        help="record-level DP as one DP-SGD step of the federation per round, each device "
        "adding a share of its noise (the guarantee holds against whoever sees only the sum of "
        "the updates), with the data set's defaults for that (docs/privacy.md)",
    )
    simulate.add_argument(
        "--secure-aggregation",
        action="store_true",
        help="devices send their updates masked through Flower's SecAgg+, so that the server "
        "sees only their sum (docs/secure-aggregation.md; not with --user-dp)",
    )
    simulate.add_argument(
        "--target-epsilon", type=float, default=8.0, help="per-device budget (default: 8)"
    )
    simulate.add_argument("--delta", type=float, default=1e-5, help="for both DP levels")
    simulate.add_argument(
        "--user-dp",
        action="store_true",
        help="also user-level DP (DP-FedAvg): the server clips each update and adds noise",
    )
    simulate.add_argument(
        "--user-epsilon", type=float, default=8.0, help="user-level budget (default: 8)"
    )
    simulate.add_argument("--accountant", choices=["rdp", "prv"], default="rdp")
    simulate.add_argument(
        "--trained",
        metavar="PARTS",
        help="what devices train and send: 'all' or module paths such as "
        "'items,users.recency' (default: all; with --user-dp, users.recency)",
    )
    simulate.add_argument("--seed", type=_seed, default=0)
    simulate.set_defaults(run=_simulate)

    report = commands.add_parser(
        "privacy-report",
        help="report what privacy each user got in a federated run",
        description="Write privacy.json, privacy.md and plots (epsilon per round, spent "
        "budgets, utility against epsilon) into the run folder of `fedrec simulate`.",
    )
    report.add_argument(
        "run_dir", type=Path, metavar="RUN_DIR", help="the --out of `fedrec simulate`"
    )
    report.add_argument(
        "--compare",
        type=Path,
        nargs="*",
        default=[],
        metavar="RUN_DIR",
        help="other runs to plot utility against epsilon with",
    )
    report.set_defaults(run=_privacy_report)

    study = commands.add_parser(
        "privacy-study",
        help="utility against epsilon: no DP, record- and user-level DP at epsilon 1, 3, 8",
        description="Run the same federation without DP and with record-level and user-level "
        "DP at epsilon 1, 3 and 8; writes every run, its privacy report, OUT/study.json and "
        "OUT/study.md. Rerun with the same --out to continue an interrupted study.",
    )
    _federation_arguments(study)
    study.add_argument("--out", type=Path, required=True, help="study folder")
    study.set_defaults(run=_privacy_study)

    audit = commands.add_parser(
        "privacy-audit",
        help="plant canaries, train with and without DP, attack the published models",
        description="Plant canaries (made-up item habits) in some devices, train the same "
        "federation without DP, with record-level DP and with user-level DP, and measure how "
        "well an attacker who sees the published model tells planted canaries from controls "
        "(docs/privacy.md).",
    )
    _federation_arguments(audit)
    audit.add_argument("--canaries", type=int, default=20, help="planted (and as many controls)")
    audit.add_argument("--repeats", type=int, default=10, help="examples per planted canary")
    audit.add_argument("--out", type=Path, required=True, help="audit folder")
    audit.set_defaults(run=_privacy_audit)

    signal = commands.add_parser(
        "privacy-signal",
        help="how much of the averaged update is signal under DP-SGD, by trained parts",
        description="At the initial weights, measure how well the clipped per-example "
        "gradients of the trained parameters agree across devices and compare the signal of a "
        "round with the DP noise each device plans (docs/privacy.md).",
    )
    _federation_arguments(signal)
    signal.add_argument(
        "--trained",
        nargs="+",
        default=["all"],
        metavar="PARTS",
        help="trained sets to compare: 'all' or module paths such as 'items,users.recency'",
    )
    signal.add_argument("--per-device", type=int, default=8, help="examples sampled per device")
    signal.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    signal.add_argument("--seed", type=_seed, default=0)
    signal.set_defaults(run=_privacy_signal)

    norms = commands.add_parser(
        "update-norms",
        help="how long a device's round update is: choosing user-dp-clipping-norm",
        description="At the initial weights, train a sample of devices for one round each as a "
        "user-level run would (no record-level DP; the recency weights unless --trained says "
        "otherwise) and print their update norms and, for each clipping norm, how much of it "
        "the mean of the clipped updates keeps (docs/privacy.md).",
    )
    _federation_arguments(norms)
    norms.add_argument("--trained", metavar="PARTS", help="trained parts (default: users.recency)")
    norms.add_argument("--sample", type=int, default=50, help="devices to train (default 50)")
    norms.add_argument(
        "--clip",
        type=float,
        nargs="+",
        default=[0.05, 0.1, 0.2, 0.5, 1.0],
        metavar="C",
        help="clipping norms to report",
    )
    norms.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    norms.add_argument("--seed", type=_seed, default=0)
    norms.set_defaults(run=_update_norms)

    pooled = commands.add_parser(
        "pooled",
        help="train on every device's examples pooled, with DP-SGD once over them (reference)",
        description="Run the devices' local round once over all their examples pooled, with "
        "record-level DP-SGD noising each batch's sum once: what DP could reach if the "
        "server saw only the sum of the devices' updates (docs/privacy.md). Not private "
        "to deploy: it needs every record in one place.",
    )
    _federation_arguments(pooled, rounds=False)
    pooled.add_argument("--no-dp", action="store_true", help="train without DP")
    pooled.add_argument("--target-epsilon", type=float, default=8.0, help="per record")
    pooled.add_argument("--delta", type=float, default=1e-5)
    pooled.add_argument("--epochs", type=int, default=5, help="epochs over the pooled examples")
    pooled.add_argument("--batch-size", type=int, default=1024, help="expected batch")
    pooled.add_argument(
        "--optimizer",
        choices=("sgd", "adam"),
        help="sgd: momentum 0.9 at 3 on a cosine (the default under DP); adam: at 3e-3 "
        "(the default without DP)",
    )
    pooled.add_argument(
        "--learning-rate", type=float, help="the optimiser's (default: 3 for sgd, 3e-3 for adam)"
    )
    pooled.add_argument(
        "--device", default="cpu", help="torch device to train on, such as cuda (default cpu)"
    )
    pooled.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    pooled.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    pooled.add_argument("--seed", type=_seed, default=0)
    pooled.set_defaults(run=_pooled)

    bench = commands.add_parser(
        "bench", help="run a benchmark", description="Run a benchmark (docs/benchmarks.md)."
    )
    benches = bench.add_subparsers(title="benchmarks", required=True, metavar="NAME")
    benchmarks = {
        "rank": (
            run_rank_benchmark,
            100_000,
            "on-device top-k ranking: fp32 vs the memory floor, int8, batching",
            "Exact top-10 over synthetic unit embeddings: fp32 against the memory bandwidth "
            "floor, int8 against fp32 (speed, recall, size), 64 queries at once against one at a "
            "time. Each figure is measured in the same run as its reference.",
        ),
        "feedback": (
            run_feedback_benchmark,
            10_000,
            "on-device latency from an event to a refreshed top-10",
            "A real device over synthetic items: time from recording an item event, or a text "
            "(encoded on the device), to the refreshed top-10; p50 and p99.",
        ),
        "dp-step": (
            run_dp_step_benchmark,
            9_742,
            "training: a DP-SGD step with Opacus' DPLSTM vs the per-example LSTM",
            "One DP-SGD step of the federated network (forward, per-example gradients, "
            "clipping, noise, update) on batches of synthetic examples, with Opacus' "
            "DPLSTM against PerExampleLSTM (what training uses); both must give the same "
            "clipped gradient.",
        ),
        "reembed": (
            run_reembed_benchmark,
            None,
            "server: re-embed the item catalog from scratch vs over cached features",
            "Re-embed the demo catalog's item texts after a round: from scratch (the text "
            "encoder, then the item tower) against the item tower over the cached "
            "frozen-encoder features (what the server does); both must give the same vectors.",
        ),
    }
    for name, (benchmark, items, summary, description) in benchmarks.items():
        one = benches.add_parser(name, help=summary, description=description)
        one.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
        default = "all" if items is None else items
        one.add_argument(
            "--items", type=int, default=items, help=f"catalog size (default {default})"
        )
        one.add_argument("--seed", type=_seed, default=0)
        one.set_defaults(run=_bench, benchmark=benchmark, options=())
        if name == "dp-step":
            one.add_argument(
                "--batch-size", type=int, default=1024, help="examples a step (default 1024)"
            )
            one.add_argument("--rounds", type=int, default=3, help="timed steps (default 3)")
            one.set_defaults(options=("batch_size", "rounds"))

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
    export.add_argument(
        "out", type=Path, metavar="DIR", help="a new or empty folder (no data set's files in it)"
    )
    export.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    export.set_defaults(run=_data_export)
    return parser
