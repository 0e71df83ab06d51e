"""Every command's --help says what it reads and writes and gives an example that parses, with overrides the
command's config accepts; every option has a help text."""

from __future__ import annotations

import argparse
import shlex

import pytest

from lnr_dist.cli import COMMAND_HELP, build_parser
from lnr_dist.core.config import load_config, load_section
from lnr_dist.data.config import DataConfig
from lnr_dist.experiment import ExperimentConfig
from lnr_dist.infer.flips_job import FlipsConfig


def _leaves(parser: argparse.ArgumentParser, prefix: str = ""):
    """(command path, parser) of every command without subcommands."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix.strip(), parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from _leaves(sub, f"{prefix}{name} ")


LEAVES = dict(_leaves(build_parser()))


def test_every_command_is_documented():
    assert set(LEAVES) == set(COMMAND_HELP)


@pytest.mark.parametrize("path", sorted(LEAVES))
def test_help_names_reads_writes_and_an_example(path, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([*path.split(), "--help"])
    text = capsys.readouterr().out
    assert "reads:" in text and "writes:" in text and f"example: lnr-dist {path}" in text


@pytest.mark.parametrize("path", sorted(LEAVES))
def test_every_option_has_help(path):
    for action in LEAVES[path]._actions:
        if not isinstance(action, argparse._HelpAction):
            assert action.help, f"lnr-dist {path}: {action.option_strings or action.dest} has no help text"


@pytest.mark.parametrize("path", sorted(LEAVES))
def test_example_parses_and_its_overrides_are_valid_keys(path):
    example = shlex.split(COMMAND_HELP[path][2])[1:]
    parser = build_parser()
    args, extra = parser.parse_known_args(example)
    overrides = [*getattr(args, "overrides", []), *extra]
    assert all("=" in item for item in overrides)
    config = getattr(args, "config", None)
    if config is None:
        return
    if path == "flips":
        load_config(FlipsConfig, config, overrides)
    elif path == "data check":
        load_section(DataConfig, config, "data", overrides)
    else:
        load_config(ExperimentConfig, config, overrides)
