"""`lnr-dist <command>`: parse, load config, call one function, exit code (0 ok, 1 failure, 2 bad input)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from .core.config import load_config
from .core.errors import RunFailed, UserError
from .core.logs import setup_logging

log = logging.getLogger("lnr_dist")


def _yaml_scalar(text: str | None) -> object:
    """Numeric flags go through YAML like overrides do, so '--threshold abc' is a config error, not a crash."""
    return None if text is None else yaml.safe_load(text)


def _add_config_args(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument("--config", required=required, help="YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. threshold=2.5")


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
    print(Path(report["results_md"]).read_text())
    print(f"steps run: {len(report['ran'])}, skipped (done before): {len(report['skipped'])}")
    print(f"results: {report['results_md']} (and {report['results_csv']})")
    print("figures:\n" + "\n".join(f"  {path}" for path in report["figures"]))


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
    from .demo import run_demo
    from .reproduce.steps import StepFailed

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

    return load_config(ExperimentConfig, args.config, args.overrides)


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
    print(
        f"{stage} done: best epoch {results['best_epoch']} (by validation {chosen_by}); test top-1 "
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
    parser.add_argument("--gpus-per-node", type=int, default=0)
    parser.add_argument("--partition")
    parser.add_argument(
        "--time", type=int, default=240, help="time limit per job in minutes (requeued when reached)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lnr-dist", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
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
    mini.add_argument("--out", required=True)
    mini.add_argument("--imb-factor", type=float, default=0.01)
    mini.add_argument("--seed", type=int, default=0)
    _add_pool_args(mini)
    mini.set_defaults(func=_cmd_data_make_mini)
    cifar = data.add_parser("make-cifar", help="CIFAR-10/100-LT from the CIFAR python batches on disk")
    cifar.add_argument("--cifar", required=True, help="folder with cifar-10-batches-py/ or cifar-100-python/")
    cifar.add_argument("--out", required=True)
    cifar.add_argument("--num-classes", type=int, choices=(10, 100), default=10)
    cifar.add_argument("--imb-factor", type=float, default=0.01)
    cifar.add_argument("--val-per-class", type=int, default=20)
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

    show = commands.add_parser(
        "config", help="print the resolved config (defaults filled in) as YAML, usable as --config"
    )
    _add_config_args(show, required=True)
    show.set_defaults(func=_cmd_config)

    launch = commands.add_parser("launch", help="submit a job or the whole pipeline through submitit")
    launch.add_argument("job", choices=("stage1", "infer", "tune", "stage2", "pipeline"))
    launch.add_argument("--cluster", choices=("local", "slurm"), default="slurm")
    _add_allocation_args(launch)
    launch.add_argument(
        "--cpus-per-task", type=int, help="default: what the config's Ray workers need per node"
    )
    launch.add_argument("--mem-gb", type=float)
    launch.add_argument("--folder", help="submitit's log folder (default <run_dir>/slurm/logs)")
    launch.add_argument(
        "--wait", action="store_true", help="block until done; a failure shows the log's tail"
    )
    _add_config_args(launch, required=True)
    launch.set_defaults(func=_cmd_launch)

    reproduce = commands.add_parser("reproduce", help="every method over seeds: tables and figures")
    reproduce.add_argument(
        "--methods",
        help="comma-separated names of the stage-2 method registry (default: all registered; "
        "built in: ce,mixup,mislas,lnr,random,smote,adasyn,bias_compensation,range_loss,mining,mining_random)",
    )
    reproduce.add_argument("--seeds", type=int, help="number of seeds (experiment seed, +1, ...)")
    reproduce.add_argument("--cluster", choices=("local", "slurm"), default="local",
                           help="local: jobs on a local Ray cluster here; slurm: each job a SLURM job")  # fmt: skip
    _add_allocation_args(reproduce)
    _add_config_args(reproduce, required=True)
    reproduce.set_defaults(func=_cmd_reproduce)

    demo = commands.add_parser("demo", help="what `make demo` runs: reproduce on the bundled mini set")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. reproduce.seeds=3")
    demo.set_defaults(func=_cmd_demo)
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


if __name__ == "__main__":
    sys.exit(main())
