"""`lnr-dist <command>`: parse, load config, call one function, exit code (0 ok, 1 failure, 2 bad input)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from .core import logs
from .core.config import load_config
from .core.errors import RunFailed, UserError
from .core.logs import setup_logging

log = logging.getLogger("lnr_dist")


# What each command reads and writes, and a command line that works on a fresh clone after `make demo` (checked
# by tests/test_cli_help.py): shown by `lnr-dist <command> --help`.
COMMAND_HELP: dict[str, tuple[str, str, str]] = {
    "flips": (
        "--probs (N, C) averaged softmax .npy, --labels (N,) .npy (or the keys of a FlipsConfig YAML)",
        "<out>/flips.npz, summary.json, config.yaml",
        "lnr-dist flips --config configs/flips_example.yaml threshold=2.5 seed=1",
    ),
    "data make-mini": (
        "scikit-learn's bundled digits (no download)",
        "<out>/Mini_LT_{train,val,test}.txt, images/, and with --unlabeled-ratio Mini_LT_pool.txt + pool counts",
        "lnr-dist data make-mini --out runs/mini-data --unlabeled-ratio 2",
    ),
    "data make-cifar": (
        "the CIFAR python batches under --cifar (cifar-10-batches-py/ or cifar-100-python/)",
        "<out>/CIFAR{10,100}_LT_{train,val,test}.txt, {train,test}/<class>/<i>.png (a pool with --unlabeled-ratio)",
        "lnr-dist data make-cifar --cifar ~/data --out runs/cifar10-lt --num-classes 10 --imb-factor 0.01",
    ),
    "data check": (
        "the config's data section: split files and images",
        "nothing; one line per problem (file:line: reason), exit code 1 when there is one",
        "lnr-dist data check --config configs/mini.yaml --decode data.num_classes=10",
    ),
    "stage1": (
        "the config's data splits (and run_dir/stage1/checkpoints/last.pt to resume)",
        "run_dir/stage1/: checkpoints/{last,best}.pt, metrics.csv, results.json, test_logits.npz, config.yaml",
        "lnr-dist stage1 --config configs/mini.yaml stage1.epochs=5 ray.num_workers=2",
    ),
    "infer": (
        "run_dir/stage1/checkpoints/best.pt (or infer.checkpoint) and the training split",
        "run_dir/infer/: flips.npz, summary.json, labels.npy, predictions.npy, candidates.npz",
        "lnr-dist infer --config configs/mini.yaml infer.threshold=2.5 infer.passes=2",
    ),
    "tune": (
        "run_dir/infer/ (the flips re-derived per trial) and the stage-1 checkpoint (or its cached features); with "
        "tune.flip_budget only run_dir/infer/candidates.npz",
        "run_dir/tune/: sweep.csv, sweep.md, sweep.png, chosen_threshold.json, chosen/ (the winner's test run); with "
        "tune.flip_budget chosen_threshold.json and sweep.md",
        "lnr-dist tune --config configs/mini.yaml tune.thresholds=[1.0,2.0,3.0]",
    ),
    "stage2": (
        "the stage-1 checkpoint, run_dir/infer/ (flipping methods), run_dir/tune/chosen_threshold.json (tuned)",
        "run_dir/stage2/: results.json, test_logits.npz, config.yaml (+ checkpoints/, metrics.csv on images)",
        "lnr-dist stage2 --config configs/mini.yaml stage2.method=lnr stage2.threshold.policy=tuned",
    ),
    "mine": (
        "the stage-1 checkpoint (or its cached features) and the pool of data.unlabeled_split",
        "run_dir/mine/: mined.csv, summary.json, precision_recall.png, mined_classes.png",
        "lnr-dist mine --config configs/mini.yaml --budget 50",
    ),
    "export": (
        "the training split, run_dir/infer/ and run_dir/tune/chosen_threshold.json",
        "--out (<path> <label> lines, the input's paths) and --out with suffix .csv",
        "lnr-dist export --config configs/mini.yaml --out runs/mini/train_lnr.txt --threshold 2.5",
    ),
    "config": (
        "the YAML and the overrides",
        "nothing: the resolved config on stdout, usable as --config",
        "lnr-dist config --config configs/mini.yaml stage2.method=mislas",
    ),
    "launch": (
        "the config; SLURM's sbatch/squeue (--cluster slurm) or nothing (--cluster local)",
        "the job's usual run_dir files, and submitit's logs in run_dir/slurm/logs/ (or --folder)",
        "lnr-dist launch stage1 --config configs/mini.yaml --cluster local --wait stage1.epochs=2",
    ),
    "reproduce": (
        "the config's data splits; what earlier runs of the same config left (finished steps are reused)",
        "run_dir/seed<k>/ (one pipeline per seed, methods/<name>/), results.md, results.csv, comparisons.csv, "
        "figures/",
        "lnr-dist reproduce --config configs/mini.yaml --methods mislas,lnr --seeds 3 stage1.epochs=10",
    ),
    "demo": (
        "the bundled mini set (built into --out when missing)",
        "--out/run/ (as reproduce), --out/mini-data/",
        "lnr-dist demo --out runs/demo reproduce.seeds=2",
    ),
}


def _document(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """Give every subcommand its reads / writes / example text (COMMAND_HELP) under its --help."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for name, sub in action.choices.items():
            path = f"{prefix}{name}"
            if path in COMMAND_HELP:
                reads, writes, example = COMMAND_HELP[path]
                sub.formatter_class = argparse.RawDescriptionHelpFormatter
                sub.epilog = f"reads:   {reads}\nwrites:  {writes}\nexample: {example}"
            _document(sub, f"{path} ")


def _yaml_scalar(text: str | None) -> object:
    """Numeric flags go through YAML like overrides do, so '--threshold abc' is a config error, not a crash."""
    return None if text is None else yaml.safe_load(text)


def _add_config_args(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument("--config", required=required, help="YAML config file")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value",
        help="config overrides after the YAML, e.g. stage1.epochs=5 (see `lnr-dist config`)",
    )  # fmt: skip


def _add_pool_args(parser: argparse.ArgumentParser) -> None:
    """The unlabelled pool options of the dataset builders (lnr_dist/data/pool.py)."""
    parser.add_argument(
        "--unlabeled-ratio", type=float, default=0.0, metavar="L",
        help="also write an unlabelled pool of up to L x the training count, from images in no split (0: none)",
    )  # fmt: skip
    parser.add_argument(
        "--pool-profile", choices=("balanced", "same", "reversed"), default="balanced",
        help="the pool's classes: equal, proportional to train, or train's profile reversed (default balanced)",
    )  # fmt: skip


def _cmd_flips(args: argparse.Namespace) -> int:
    from .infer.flips_job import FlipsConfig, format_summary, run_flips

    flags = {
        "probs": args.probs,
        "labels": args.labels,
        "indices": args.indices,
        "out": args.out,
        "threshold": _yaml_scalar(args.threshold),
        "seed": _yaml_scalar(args.seed),
        "binary": True if args.binary else None,
        "allow_empty_classes": True if args.allow_empty_classes else None,
    }
    cfg = load_config(FlipsConfig, args.config, args.overrides, flags)
    summary = run_flips(cfg)
    print(format_summary(summary))
    print(f"\nwritten: {Path(cfg.out) / 'flips.npz'}, {Path(cfg.out) / 'summary.json'}")
    return 0


def _print_reproduce(report: dict) -> None:
    from .reproduce.report import format_summary

    print(format_summary(report))


def _keep_screen_in(args: argparse.Namespace, cfg) -> None:
    """The run folder's log (RunLayout.log) gets this command's screen from now on, Ray's own messages included."""
    logs.attach_run_log(cfg.with_absolute_paths().layout.log(args.command), args.command_line)


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from .experiment import ExperimentConfig
    from .reproduce.runner import reproduce, slurm_executor
    from .reproduce.steps import StepFailed

    overrides = list(args.overrides)
    if args.methods:
        overrides.append(f"reproduce.methods=[{args.methods}]")
    if args.seeds is not None:
        overrides.append(f"reproduce.seeds={args.seeds}")
    cfg = load_config(ExperimentConfig, args.config, overrides)
    _keep_screen_in(args, cfg)
    execute = None
    if args.cluster == "slurm":
        from .launch.submit import LaunchOptions

        execute = slurm_executor(LaunchOptions(cluster="slurm", nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                                               partition=args.partition, time_min=args.time))  # fmt: skip
    try:
        report = reproduce(cfg, execute)
    except StepFailed as exc:
        print(f"lnr-dist reproduce: {exc}", file=sys.stderr)
        return 1
    _print_reproduce(report)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import demo_config, run_demo
    from .reproduce.steps import StepFailed

    _keep_screen_in(args, demo_config(Path(args.out).resolve(), args.overrides))
    try:
        report = run_demo(Path(args.out), args.overrides)
    except StepFailed as exc:
        print(f"lnr-dist demo: {exc}", file=sys.stderr)
        return 1
    _print_reproduce(report)
    return 0


def _print_built(files: dict[str, Path]) -> None:
    """The files a dataset builder wrote, and the realised pool counts when it drew a pool."""
    from .data.pool import pool_counts_table

    print("\n".join(f"{name}: {path}" for name, path in files.items()))
    if "pool_counts" in files:
        print(pool_counts_table(json.loads(Path(files["pool_counts"]).read_text())))


def _cmd_data_make_mini(args: argparse.Namespace) -> int:
    from .data.mini import make_mini

    _print_built(
        make_mini(
            args.out, imb_factor=args.imb_factor, seed=args.seed, unlabeled_ratio=args.unlabeled_ratio,
            pool_profile=args.pool_profile,
        )
    )  # fmt: skip
    return 0


def _cmd_data_make_cifar(args: argparse.Namespace) -> int:
    from .data.cifar import make_cifar_lt

    _print_built(
        make_cifar_lt(
            args.cifar, args.out, args.num_classes, args.imb_factor, args.val_per_class,
            unlabeled_ratio=args.unlabeled_ratio, pool_profile=args.pool_profile, seed=args.seed,
        )
    )  # fmt: skip
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    from .core.config import load_section
    from .data.check import check_data
    from .data.config import DataConfig

    cfg = load_section(DataConfig, args.config, "data", args.overrides)
    problems = check_data(cfg, decode=args.decode, progress=True)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 1
    print("data check: no problems found" + ("" if args.decode else " (add --decode to decode every image)"))
    return 0


def _load_experiment(args: argparse.Namespace):
    from .experiment import ExperimentConfig

    cfg = load_config(ExperimentConfig, args.config, args.overrides)
    if args.command != "config":
        _keep_screen_in(args, cfg)
    return cfg


def _cmd_config(args: argparse.Namespace) -> int:
    from .core.config import to_yaml

    print(to_yaml(_load_experiment(args)), end="")
    return 0


def _run_job(job: str, cfg):
    """Run a config-driven job here, or, inside an sbatch template's allocation, on a Ray cluster spanning it
    (None on the tasks that only lend their node)."""
    from .jobs import JOBS
    from .launch.ray_allocation import in_sbatch_allocation, run_in_allocation

    return run_in_allocation(job, cfg) if in_sbatch_allocation() else JOBS[job](cfg, None)


def _run_stage(args: argparse.Namespace, stage: str) -> int:
    cfg = _load_experiment(args)
    results = _run_job(stage, cfg)
    if results is None:
        return 0
    if "not_applicable" in results:
        print(f"{stage}: method {results['method']} does not apply here: {results['not_applicable']}")
        return 0
    test, calibrated = results["test"], results["test_calibrated"]
    flips = results.get("flips")
    chosen_by = results.get("select_metric", cfg.tune.objective)  # a head on cached features picks on tune's
    # best_epoch None: a method scored without training (e.g. a nearest-neighbour vote)
    epoch, method = results.get("best_epoch"), results.get("method")
    trained = (
        f"best epoch {epoch} (by validation {chosen_by})"
        if epoch is not None
        else f"method {method} scored without training"
    )
    print(
        f"{stage} done: {trained}; test top-1 "
        f"{test['top1']:.2f}, many {test['many']:.2f}, medium {test['medium']:.2f}, few {test['few']:.2f}, "
        f"ECE {test['ece']:.2f} -> {calibrated['ece']:.2f} and NLL {test['nll']:.3f} -> {calibrated['nll']:.3f} "
        f"after temperature scaling (T = {results['temperature']:.3f}, fitted on validation)"
    )
    if flips:
        print(f"method {flips['method']}: {flips['num_flips']} flips (threshold {flips['threshold']})")
    print(f"run folder: {cfg.with_absolute_paths().layout.stage(stage)}")
    return 0


def _cmd_stage1(args: argparse.Namespace) -> int:
    return _run_stage(args, "stage1")


def _cmd_stage2(args: argparse.Namespace) -> int:
    return _run_stage(args, "stage2")


def _cmd_tune(args: argparse.Namespace) -> int:
    cfg = _load_experiment(args)
    report = _run_job("tune", cfg)
    if report is None:
        return 0
    layout = cfg.with_absolute_paths().layout
    print((layout.tune / "sweep.md").read_text())
    print(f"chosen threshold {report['threshold']:g} written to {layout.chosen_threshold} "
          "(use it with `lnr-dist stage2 ... stage2.threshold.policy=tuned`)")  # fmt: skip
    return 0


def _cmd_infer(args: argparse.Namespace) -> int:
    from .infer.flips_job import format_summary

    cfg = _load_experiment(args)
    summary = _run_job("infer", cfg)
    if summary is None:
        return 0
    print(format_summary(summary))
    print("\ngroup      before    after")
    for group, counts in summary["groups"].items():
        print(f"{group:<8} {counts['before']:>8} {counts['after']:>8}")
    print(
        f"\n{summary['world_size']} workers, {summary['passes']} passes ({summary['forwards_per_sample']:.2f} forwards"
        f" per sample), {summary['images_per_second']:.1f} images/s, {summary['wall_seconds']:.1f} s"
    )
    if "note" in summary:
        print(f"note: {summary['note']}")
    print(f"written: {cfg.with_absolute_paths().layout.infer}")
    return 0


def _cmd_mine(args: argparse.Namespace) -> int:
    from .features.mine import format_summary

    if args.budget is not None:
        args.overrides = [*args.overrides, f"mining.budget={args.budget}"]
    cfg = _load_experiment(args)
    summary = _run_job("mine", cfg)
    if summary is None:
        return 0
    print(format_summary(summary))
    folder = Path(summary["files"]["mined"]).parent
    print(f"written: {folder} (mined.csv, summary.json, precision_recall.png, mined_classes.png)")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .stage2.export import export_flipped_split

    threshold = _yaml_scalar(args.threshold)
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int | float)):
        raise UserError(f"--threshold {args.threshold!r}: give a number (a z threshold, e.g. 2.5)")
    done = export_flipped_split(
        _load_experiment(args), args.out, threshold, args.method, args.seed, args.force
    )
    print(f"{done.source}: {done.num_flips} of the training labels changed")
    print(f"written: {done.split} (<path> <label>) and {done.csv} (index, path, original_label, new_label)")
    return 0


def _cmd_launch(args: argparse.Namespace) -> int:
    from .launch.submit import JobFailed, LaunchOptions, describe, launch, wait_for

    opts = LaunchOptions(
        cluster=args.cluster, nodes=args.nodes, gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task,
        partition=args.partition, time_min=args.time, mem_gb=args.mem_gb, folder=args.folder,
    )  # fmt: skip
    submitted = launch(args.job, _load_experiment(args), opts)
    for item in submitted:
        print(describe(item))
    if not args.wait:
        return 0
    try:
        for item in submitted:
            wait_for(item)
            print(f"{item.name}: job {item.job.job_id} finished")
    except JobFailed as exc:
        print(f"lnr-dist launch: {exc}", file=sys.stderr)
        return 1
    return 0


def _add_allocation_args(parser: argparse.ArgumentParser) -> None:
    """The SLURM allocation of each job (`launch`, `reproduce --cluster slurm`)."""
    parser.add_argument("--nodes", type=int, default=1, help="nodes of one Ray cluster (one task per node)")
    parser.add_argument("--gpus-per-node", type=int, default=0, help="GPUs to request per node (default 0)")
    parser.add_argument("--partition", help="SLURM partition (default: the cluster's default)")
    parser.add_argument(
        "--time", type=int, default=240, help="time limit per job in minutes (requeued when reached)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lnr-dist", description=__doc__)
    parser.add_argument(
        "--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"), type=str.upper,
        help="this process's, every Ray Train worker's and every Tune trial's (default INFO; DEBUG also shows "
        "every epoch's metrics line)",
    )  # fmt: skip
    parser.add_argument(
        "--verbose", action="store_true",
        help="also show Ray's own messages (always kept in <run_dir>/logs/<command>.log)",
    )  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)

    flips = commands.add_parser("flips", help="LNR flips from saved predictions")
    flips.add_argument("--probs", help="(N, C) .npy of averaged softmax (float16/32); (N,) with --binary")
    flips.add_argument("--labels", help="(N,) .npy of integer labels")
    flips.add_argument("--indices", help="(N,) .npy of dataset indices (default 0..N-1)")
    flips.add_argument("--threshold", help="z-score threshold t")
    flips.add_argument("--seed", help="seed of the uniform draws (default 0)")
    flips.add_argument("--out", help="output folder")
    flips.add_argument("--binary", action="store_true", help="binary variant: labels 0 majority, 1 minority")
    flips.add_argument(
        "--allow-empty-classes",
        action="store_true",
        help="flip even when a class has no sample (it then counts as the rarest and can receive flips)",
    )
    _add_config_args(flips)
    flips.set_defaults(func=_cmd_flips)

    data = commands.add_parser("data", help="build and check datasets").add_subparsers(
        dest="data_command", required=True
    )
    mini = data.add_parser("make-mini", help="the real bundled long-tailed mini set (scikit-learn digits)")
    mini.add_argument("--out", required=True, help="folder to write the splits and images into")
    mini.add_argument(
        "--imb-factor", type=float, default=0.01, help="rarest / largest class count (default 0.01: 100x)"
    )
    mini.add_argument("--seed", type=int, default=0, help="seed of the draw of images into the splits")
    _add_pool_args(mini)
    mini.set_defaults(func=_cmd_data_make_mini)
    cifar = data.add_parser("make-cifar", help="CIFAR-10/100-LT from the CIFAR python batches on disk")
    cifar.add_argument("--cifar", required=True, help="folder with cifar-10-batches-py/ or cifar-100-python/")
    cifar.add_argument("--out", required=True, help="folder to write the splits and images into")
    cifar.add_argument("--num-classes", type=int, choices=(10, 100), default=10, help="CIFAR-10 or CIFAR-100")
    cifar.add_argument(
        "--imb-factor", type=float, default=0.01, help="rarest / largest class count (default 0.01: 100x)"
    )
    cifar.add_argument(
        "--val-per-class", type=int, default=20, help="validation images per class, from the training batches"
    )
    cifar.add_argument("--seed", type=int, default=0, help="seed of the pool's draw (the LT split has none)")
    _add_pool_args(cifar)
    cifar.set_defaults(func=_cmd_data_make_cifar)
    check = data.add_parser("check", help="validate split files and images before spending cluster time")
    check.add_argument(
        "--decode",
        action="store_true",
        help="decode every image (slower); without it, only images whose first and last bytes look wrong",
    )
    _add_config_args(check, required=True)
    check.set_defaults(func=_cmd_data_check)

    config_jobs = (
        ("stage1", _cmd_stage1, "stage 1: train the backbone on Ray Train"),
        ("infer", _cmd_infer, "sharded two-pass inference and LNR flips on Ray Train"),
        ("tune", _cmd_tune, "Ray Tune threshold sweep on validation (or tune.flip_budget's threshold)"),
        ("stage2", _cmd_stage2, "stage 2: classifier re-training on (LNR-flipped) labels"),
    )
    for name, func, text in config_jobs:
        job = commands.add_parser(name, help=text)
        _add_config_args(job, required=True)
        job.set_defaults(func=func)

    mine = commands.add_parser(
        "mine", help="minority-class mining on the unlabelled pool (MMM 2022) against three baselines"
    )
    mine.add_argument("--budget", help="pool images to mine, K (mining.budget; default from the config)")
    _add_config_args(mine, required=True)
    mine.set_defaults(func=_cmd_mine)

    export = commands.add_parser(
        "export",
        help="write the flipped training split (<path> <label>) and a CSV of the changes",
        description="Reads the run folder's infer/ (and tune/chosen_threshold.json); writes --out, a split file "
        "with the input split's paths and the flipped labels, and --out with suffix .csv (index, path, "
        "original_label, new_label). Default labels: LNR at the sweep's threshold, else infer.threshold. "
        "Example: lnr-dist export --config configs/mini.yaml --out runs/mini/flipped_train.txt run_dir=runs/mini/seed0",
    )
    choice = export.add_mutually_exclusive_group()
    choice.add_argument("--threshold", help="LNR's flips at this z threshold (e.g. 2.5)")
    choice.add_argument(
        "--method", help="the labels this stage-2 method trains on (e.g. lnr, random, mislas)"
    )
    export.add_argument("--out", required=True, help="the split file to write (its CSV goes beside it)")
    export.add_argument("--seed", type=int, help="in a `reproduce` folder: read run_dir/seed<SEED>/")
    export.add_argument("--force", action="store_true", help="overwrite --out and its CSV if they exist")
    _add_config_args(export, required=True)
    export.set_defaults(func=_cmd_export)

    show = commands.add_parser(
        "config", help="print the resolved config (defaults filled in) as YAML, usable as --config"
    )
    _add_config_args(show, required=True)
    show.set_defaults(func=_cmd_config)

    launch = commands.add_parser("launch", help="submit a job or the whole pipeline through submitit")
    launch.add_argument(
        "job", choices=("stage1", "infer", "tune", "stage2", "pipeline"),
        help="one job, or pipeline: stage1 -> infer -> tune -> stage2 as dependent jobs",
    )  # fmt: skip
    launch.add_argument(
        "--cluster", choices=("local", "slurm"), default="slurm",
        help="slurm: sbatch through submitit; local: a process here, through submitit's local executor",
    )  # fmt: skip
    _add_allocation_args(launch)
    launch.add_argument(
        "--cpus-per-task", type=int, help="default: what the config's Ray workers need per node"
    )
    launch.add_argument("--mem-gb", type=float, help="memory per node in GB (default: SLURM's default)")
    launch.add_argument("--folder", help="submitit's log folder (default <run_dir>/slurm/logs)")
    launch.add_argument(
        "--wait", action="store_true", help="block until done; a failure shows the log's tail"
    )
    _add_config_args(launch, required=True)
    launch.set_defaults(func=_cmd_launch)

    reproduce = commands.add_parser("reproduce", help="every method over seeds: tables and figures")
    reproduce.add_argument(
        "--methods",
        help="comma-separated names of the stage-2 method registry, e.g. mislas,lnr,random (default: every "
        "registered method; a wrong name is refused with the list of names)",
    )
    reproduce.add_argument("--seeds", type=int, help="number of seeds (experiment seed, +1, ...)")
    reproduce.add_argument("--cluster", choices=("local", "slurm"), default="local",
                           help="local: jobs on a local Ray cluster here; slurm: each job a SLURM job")  # fmt: skip
    _add_allocation_args(reproduce)
    _add_config_args(reproduce, required=True)
    reproduce.set_defaults(func=_cmd_reproduce)

    demo = commands.add_parser("demo", help="what `make demo` runs: reproduce on the bundled mini set")
    demo.add_argument(
        "--out", default="runs/demo", help="folder for the mini set and the run (default runs/demo)"
    )
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. reproduce.seeds=3")
    demo.set_defaults(func=_cmd_demo)
    _document(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may follow flags ("launch stage1 --config c.yaml --wait stage1.epochs=2")
    if (
        extra
        and hasattr(args, "overrides")
        and all("=" in item and not item.startswith("-") for item in extra)
    ):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.command_line = " ".join(["lnr-dist", *(sys.argv[1:] if argv is None else argv)])
    # the screen: Ray's noise off it, a live progress bar when stderr is a terminal (the workers are told)
    logs.install_screen(args.log_level, verbose=args.verbose, terminal=sys.stderr.isatty())
    setup_logging(args.log_level)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except UserError as exc:
        print(f"lnr-dist {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RunFailed as exc:  # not bad input: the message names the log with the workers' tracebacks
        print(f"lnr-dist {args.command}: failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if argv is None and "ray" in sys.modules:  # the process ends here (in-process callers keep their Ray)
            _stop_ray_behind_the_screen()
        logs.uninstall_screen()


def _stop_ray_behind_the_screen() -> None:
    """ray.shutdown() while the Screen still filters: Ray forwards its actors' last lines as it stops (e.g. the
    PlacementGroupCleaner's "Failed to query" warning), which would otherwise reach the bare terminal at exit."""
    import ray

    try:
        if ray.is_initialized():
            ray.shutdown()
    # the command's outcome is already decided; a failing shutdown must not change it
    except Exception as exc:
        logging.getLogger(__name__).debug("ray.shutdown at exit: %s", exc)


if __name__ == "__main__":
    sys.exit(main())
