"""`lnr-dist <command>`: parse, load config, call one function, exit code (0 ok, 1 failure, 2 bad input)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from .config import load_config
from .errors import UserError
from .logs import setup_logging

log = logging.getLogger("lnr_dist")


def _yaml_scalar(text: str | None) -> object:
    """Numeric flags go through YAML like overrides do, so '--threshold abc' is a config error, not a crash."""
    return None if text is None else yaml.safe_load(text)


def _add_config_args(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument("--config", required=required, help="YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. threshold=2.5")


def _cmd_flips(args: argparse.Namespace) -> int:
    from .flips_job import FlipsConfig, format_summary, run_flips

    flags = {
        "probs": args.probs,
        "labels": args.labels,
        "indices": args.indices,
        "out": args.out,
        "threshold": _yaml_scalar(args.threshold),
        "seed": _yaml_scalar(args.seed),
        "binary": True if args.binary else None,
    }
    cfg = load_config(FlipsConfig, args.config, args.overrides, flags)
    summary = run_flips(cfg)
    print(format_summary(summary))
    print(f"\nwritten: {Path(cfg.out) / 'flips.npz'}, {Path(cfg.out) / 'summary.json'}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_flip_demo
    from .flips_job import format_summary

    out = Path(args.out)
    summary = run_flip_demo(out)
    print(format_summary(summary))
    print(f"\nwritten: {out / 'flips' / 'flips.npz'}, {out / 'flips' / 'summary.json'}")
    return 0


def _cmd_data_make_mini(args: argparse.Namespace) -> int:
    from .data.mini import make_mini

    files = make_mini(args.out, imb_factor=args.imb_factor, seed=args.seed)
    print("\n".join(f"{name}: {path}" for name, path in files.items()))
    return 0


def _cmd_data_make_cifar(args: argparse.Namespace) -> int:
    from .data.cifar import make_cifar_lt

    files = make_cifar_lt(args.cifar, args.out, args.num_classes, args.imb_factor, args.val_per_class)
    print("\n".join(f"{name}: {path}" for name, path in files.items()))
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    from .config import load_section
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


def _run_stage(args: argparse.Namespace, stage: str) -> int:
    from .train import fit

    cfg = _load_experiment(args)
    results = fit(cfg, stage)
    test, calibrated = results["test"], results["test_calibrated"]
    flips = results.get("flips")
    print(
        f"{stage} done: best epoch {results['best_epoch']} (by validation {results['select_metric']}); test top-1 "
        f"{test['top1']:.2f}, many {test['many']:.2f}, medium {test['medium']:.2f}, few {test['few']:.2f}, "
        f"ECE {test['ece']:.2f} -> {calibrated['ece']:.2f} and NLL {test['nll']:.3f} -> {calibrated['nll']:.3f} "
        f"after temperature scaling (T = {results['temperature']:.3f}, fitted on validation)"
    )
    if flips:
        print(f"method {flips['method']}: {flips['num_flips']} flips (threshold {flips['threshold']})")
    print(f"run folder: {cfg.with_absolute_paths().stage_dir(stage)}")
    return 0


def _cmd_stage1(args: argparse.Namespace) -> int:
    return _run_stage(args, "stage1")


def _cmd_stage2(args: argparse.Namespace) -> int:
    return _run_stage(args, "stage2")


def _cmd_tune(args: argparse.Namespace) -> int:
    from .tune import run_sweep

    cfg = _load_experiment(args)
    report = run_sweep(cfg)
    out = Path(cfg.with_absolute_paths().run_dir) / "tune"
    print((out / "sweep.md").read_text())
    print(f"chosen threshold {report['threshold']:g} written to {out / 'chosen_threshold.json'} "
          "(use it with `lnr-dist stage2 ... stage2.threshold=tuned`)")  # fmt: skip
    return 0


def _cmd_infer(args: argparse.Namespace) -> int:
    from .flips_job import format_summary
    from .infer import run_inference

    cfg = _load_experiment(args)
    summary = run_inference(cfg)
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
    print(f"written: {Path(cfg.with_absolute_paths().run_dir) / 'infer'}")
    return 0


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
    _add_config_args(flips)
    flips.set_defaults(func=_cmd_flips)

    data = commands.add_parser("data", help="build and check datasets").add_subparsers(
        dest="data_command", required=True
    )
    mini = data.add_parser("make-mini", help="the real bundled long-tailed mini set (scikit-learn digits)")
    mini.add_argument("--out", required=True)
    mini.add_argument("--imb-factor", type=float, default=0.01)
    mini.add_argument("--seed", type=int, default=0)
    mini.set_defaults(func=_cmd_data_make_mini)
    cifar = data.add_parser("make-cifar", help="CIFAR-10/100-LT from the CIFAR python batches on disk")
    cifar.add_argument("--cifar", required=True, help="folder with cifar-10-batches-py/ or cifar-100-python/")
    cifar.add_argument("--out", required=True)
    cifar.add_argument("--num-classes", type=int, choices=(10, 100), default=10)
    cifar.add_argument("--imb-factor", type=float, default=0.01)
    cifar.add_argument("--val-per-class", type=int, default=20)
    cifar.set_defaults(func=_cmd_data_make_cifar)
    check = data.add_parser("check", help="validate split files and images before spending cluster time")
    check.add_argument("--decode", action="store_true", help="also decode every image (slower)")
    _add_config_args(check, required=True)
    check.set_defaults(func=_cmd_data_check)

    config_jobs = (
        ("stage1", _cmd_stage1, "stage 1: train the backbone on Ray Train"),
        ("infer", _cmd_infer, "sharded two-pass inference and LNR flips on Ray Train"),
        ("tune", _cmd_tune, "Ray Tune threshold sweep on validation"),
        ("stage2", _cmd_stage2, "stage 2: classifier re-training on (LNR-flipped) labels"),
    )
    for name, func, text in config_jobs:
        job = commands.add_parser(name, help=text)
        _add_config_args(job, required=True)
        job.set_defaults(func=func)

    demo = commands.add_parser("demo", help="what `make demo` runs")
    demo.add_argument("--out", default="runs/demo")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except UserError as exc:
        print(f"lnr-dist {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
