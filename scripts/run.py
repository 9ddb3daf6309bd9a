#!/usr/bin/env python
"""Run one federated-learning simulation and write its results folder.

    python scripts/run.py --algo dsfl --clients 1000 --dataset synthetic --rounds 5

The same as ``jaxfl run ...`` (:mod:`jaxfl.cli.run`); this file lets a plain checkout run it.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout too

from jaxfl.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
