"""The ``jaxfl`` command: ``jaxfl run ...``, ``jaxfl reproduce ...``, ``jaxfl bench ...``.

``jaxfl run`` is :mod:`jaxfl.cli.run` (``python scripts/run.py`` is the same); its ``--help``
imports no JAX. ``reproduce`` and ``bench`` run ``scripts/reproduce.py`` and
``scripts/bench.py`` of the checkout this package was installed from (the reproductions and
benchmarks are not installed with the library).
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

USAGE = """usage: jaxfl {run,reproduce,bench} [flags]

  run        one simulation or sweep and its results folder (jaxfl run --help)
  reproduce  re-measure each paper's claim over seeds (jaxfl reproduce --help; needs a checkout)
  bench      the benchmark tables (jaxfl bench --help; needs a checkout)"""
SCRIPTS = {"reproduce": "reproduce.py", "bench": "bench.py"}
# exit statuses of a run stopped by Ctrl-C (SIGINT) or SIGTERM: leave without waiting for XLA
INTERRUPTED_EXITS = (130, 143)


def run(argv: list[str]) -> int:
    """``jaxfl run``: one CPU device per core on one host (set before JAX starts), then the run."""
    from jaxfl.cli import execution, flags

    if {"-h", "--help"} & set(argv):
        from jaxfl.cli.flag_help import RUN_DESCRIPTION

        flags.parse(argv, description=RUN_DESCRIPTION)  # prints and exits, without JAX
    if "--coordinator-address" not in argv:
        execution.force_host_devices(execution.cpu_cores())
    from jaxfl.cli import run as run_module

    code = run_module.main(argv)
    if code in INTERRUPTED_EXITS:  # do not wait at exit for a round still running in XLA
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def checkout_script(name: str) -> Path | None:
    """``scripts/<name>`` of the checkout the package comes from, if there is one."""
    path = Path(__file__).resolve().parents[2] / "scripts" / name
    return path if path.exists() else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "run":
        return run(rest)
    if command not in SCRIPTS:
        print(
            f"error: unknown command {command!r}; allowed: run, reproduce, bench", file=sys.stderr
        )
        return 2
    script = checkout_script(SCRIPTS[command])
    if script is None:
        print(
            f"error: jaxfl {command} needs a checkout of the jaxfl repository (scripts/ and "
            f"reproductions/ are not installed): git clone it, then pip install -e .",
            file=sys.stderr,
        )
        return 2
    saved = sys.argv
    sys.argv = [str(script), *rest]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    finally:
        sys.argv = saved
    return 0


def entry() -> None:
    """The console script."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
