"""Every command-line flag of scripts/run.py: definitions with help, validation, config files.

:func:`parse` reads flags, optionally on top of a config file (``--config FILE``, TOML or JSON,
keys named like the flags), and :func:`parse_config` makes the
:class:`jaxfl.configs.run.RunConfig` the library takes from them; :func:`validate` checks the
cheap things before any data is loaded; :func:`resume_args` rebuilds a stopped run's flags from
its results folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from jaxfl.cli.algorithm_flags import add_algorithm_arguments
from jaxfl.cli.config_flags import (
    FAULT_SETTINGS,
    add_setting_flags,
    check_capabilities,
    resolve,
    warn_foreign,
)
from jaxfl.cli.execution import EXECUTION_FLAGS, add_scale_arguments
from jaxfl.cli.flag_help import Grouped, help_algo
from jaxfl.cli.privacy_flags import add_privacy_arguments
from jaxfl.configs import ALGORITHMS, SPECS
from jaxfl.configs.fields import settings
from jaxfl.configs.run import AxisConfig, DataConfig, ModelConfig, OutputConfig, RunConfig
from jaxfl.configs.shared import ClockFields
from jaxfl.core.errors import ConfigError as ConfigError  # noqa: E402  (raised by the library too)
from jaxfl.experiments.validation import validate as validate  # the checks the library runs too


def add_arguments(
    parser: argparse.ArgumentParser, algo: str | None = None
) -> argparse.ArgumentParser:
    """Add the flags; ``algo`` (one algorithm) makes the settings' help show its defaults."""
    a = parser.add_argument
    a(
        "--algo",
        default="dsfl",
        help=f"federated algorithm: {', '.join(ALGORITHMS)} (default dsfl); several, comma "
        "separated (fedavg,dsfl), run one after another on the same partitions and seeds and "
        "compared in comparison.md",
    )
    add_setting_flags(a, tuple(settings(AxisConfig)), algo)
    add_setting_flags(a, ("clients_per_round", "participation"), algo)
    add_setting_flags(a, tuple(settings(DataConfig)), algo)
    add_setting_flags(a, tuple(settings(ModelConfig)), algo)
    add_setting_flags(a, tuple(settings(RunConfig)), algo)  # rounds, seed, eval_every
    add_setting_flags(a, ("local_epochs", "batch_size", "lr", "client_chunk"), algo)
    add_algorithm_arguments(a, algo)
    add_setting_flags(a, tuple(FAULT_SETTINGS), algo)
    add_privacy_arguments(a, algo)
    add_setting_flags(a, tuple(f.name for f in dataclasses.fields(ClockFields)), algo)
    add_scale_arguments(a)
    return parser


def add_run_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of the host loop: results folder, checkpoints, resuming, stopping, logging."""
    a = parser.add_argument
    a(
        "--config",
        default=None,
        help="TOML or JSON file of flag values (keys named like the flags, e.g. dropout = 0.2 or "
        "'clients-per-round' = 10); flags on the command line override it",
    )
    add_setting_flags(a, tuple(settings(OutputConfig)))
    return parser


def _parser(description: str = "", algo: str | None = None, **kwargs) -> argparse.ArgumentParser:
    """All flags, grouped for --help; ``algo`` (one known algorithm) shows only its own flags."""
    epilog = (
        None
        if algo
        else "python scripts/run.py --algo NAME --help lists only that algorithm's own flags"
    )
    kwargs.setdefault("usage", "%(prog)s [--algo NAME] [--dataset NAME] [--clients C] [FLAG ...]")
    parser = argparse.ArgumentParser(description=description, epilog=epilog, **kwargs)
    algo = algo if algo in SPECS else None
    grouped = Grouped(parser, algo)
    add_arguments(grouped, algo)
    add_run_arguments(grouped)
    return parser


def load_config_file(path: str | Path, parser: argparse.ArgumentParser) -> dict:
    """Flag values from a TOML/JSON file, keyed by argparse dest; unknown keys are an error."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--config {path} does not exist")
    text = path.read_text()
    if path.suffix == ".json":
        raw = json.loads(text)
    else:
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        raw = tomllib.loads(text)
    dests = {action.dest for action in parser._actions} - {"help", "config", "resume"}
    values = {}
    for key, value in raw.items():
        dest = key.lstrip("-").replace("-", "_")
        if dest not in dests:
            raise ConfigError(
                f"--config {path}: unknown key {key!r}; allowed: the flags of run.py "
                f"({', '.join(sorted(dests))})"
            )
        values[dest] = value
    return values


def parse(argv: list[str] | None = None, description: str = "") -> argparse.Namespace:
    """Parse ``argv``; values from ``--config FILE`` act as defaults the command line overrides."""
    parser = _parser(description, algo=help_algo(argv))
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        parser.set_defaults(**load_config_file(pre.config, parser))
    args = parser.parse_args(argv)
    if args.algo in SPECS:  # one algorithm: its settings' defaults; several: as each is run
        check_capabilities(args)  # an error before the notes on flags it does not read
        warn_foreign(args, given_flags(argv))
        resolve(args)
    return args


def parse_config(argv: list[str] | None = None) -> RunConfig:
    """The run ``argv`` describes (one algorithm or several), as the library takes it:
    ``RunConfig.from_flags(parse(argv))``."""
    return RunConfig.from_flags(parse(argv))


def given_flags(argv: list[str] | None) -> set[str]:
    """The dests of the flags that ``argv`` sets explicitly."""
    parser = _parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def resume_args(argv: list[str] | None, results_dir: str | Path) -> argparse.Namespace:
    """The flags of the run in ``results_dir`` (its config.json), for ``--resume``.

    Only ``--rounds`` (to extend the run) and the flags that change how, not what, the run
    computes (``--devices``, ``--rounds-per-call``, the multi-host flags) may be given; any other
    flag is an error, since it could make the resumed run differ from the one that was stopped.
    """
    results_dir = Path(results_dir)
    config_file = results_dir / "config.json"
    if not config_file.exists():
        raise ConfigError(f"--resume {results_dir}: no config.json, not a jaxfl results folder")
    saved = json.loads(config_file.read_text()).get("flags")
    if saved is None:
        raise ConfigError(f"--resume {results_dir}: config.json has no 'flags' record")
    given = given_flags(argv)
    allowed = {"rounds", *EXECUTION_FLAGS}
    extra = given - {"resume"} - allowed
    if extra:
        raise ConfigError(
            "--resume takes only --rounds, --devices, --rounds-per-call and the multi-host flags "
            f"besides it; got {', '.join(sorted(extra))}"
        )
    args = _parser().parse_args([])
    vars(args).update(saved)
    fresh = parse(argv)
    for flag in given & allowed:
        setattr(args, flag, getattr(fresh, flag))
    args.resume = str(results_dir)
    args.out = str(results_dir)
    return resolve(args) if args.algo in SPECS else args
