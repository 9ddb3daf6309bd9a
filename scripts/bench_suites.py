"""The named workloads of ``scripts/bench.py --suite NAME``.

- ``fedavg-cnn``: FedJAX's comparison. FedAvg on MNIST, 100 clients of 500 examples (IID), all
  sampled, 1 local epoch, batch 10, lr 0.05, FedAvg's MNIST CNN (1,663,370 parameters).
- ``dsfl-lab``: the DS-FL authors' lab workload. MNIST Dirichlet(1.0), C = 100, LeNet-5,
  5 local epochs, batch 50, lr 0.1, 5 distillation epochs, open set 10,000 with 1,000 per round,
  ERA T = 0.1, every client sampled.
- ``lowerings``: every image model's FedAvg round (4 of 100 MNIST clients, 1 local epoch) under
  ``--conv-lowering auto`` (the default) and each forced lowering, and the per-layer choices
  ``auto`` measured.
- ``experiments``: S experiments in one call (``run.py --seeds S``) against S separate runs,
  compile included and excluded (``scripts/bench_experiments.py``): FedAvg (MLP) and DS-FL
  (LeNet-5, 1 local + 1 distillation epoch) at C = 100, S = 1, 4, 8.
- ``async``: FedBuff's server step against the synchronous FedAvg round (MLP, C = 1,000 and
  10,000): server steps/s and client updates/s (``scripts/bench_async.py``).
- ``natural``: heavy-tailed client sizes (``scripts/bench_natural.py``): FedAvg on LEAF's
  synthetic federation (1,000 clients), 10 and 100 per round, the round with its size-sorted
  chunk schedule against uniform chunks and the per-client loop, with each layout's padding
  efficiency.
- ``language``: Shakespeare next-character prediction (``scripts/bench_language.py``): the LSTM
  layer's formulation, then FedAvg with the character LSTM, 10 and 100 roles per round, against
  the per-client loop and (``--fedjax-python``) FedJAX's own Shakespeare FedAvg.
- ``gpu``: everything an accelerator session should measure in one command (about 8 minutes on
  one H200): the DS-FL lab round at C = 100, 1,000, 10,000 (memory-sized chunks and chunks of
  64), each conv lowering at C = 100, the FedAvg CNN at C = 10,000, and 1..64 experiments of
  DS-FL at C = 100. ``--tiny`` shrinks every suite to seconds (to test the command on a CPU).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxfl.models import LOWERING_CHOICES  # noqa: E402

CONV_LOWERS = ("rows", "im2col", "patches", "xla")
# --tiny: every workload with 2 sampled clients of a few hundred examples, a small public set
TINY_FLAGS = ["--clients-per-round", "2", "--public-per-round", "100", "--client-test-size", "20"]


CONV_MODELS = ("lenet5", "cnn", "resnet8", "resnet20")

# named workloads: the flags of one bench command
SUITES = {
    "fedavg-cnn": {
        "algo": ["fedavg"],
        "models": ["cnn"],
        "clients": [100],
        "lowerings": ["auto"],
        "partition": "iid",
        "extra": "--local-epochs 1 --batch-size 10 --lr 0.05",
    },
    "dsfl-lab": {"algo": ["dsfl"], "models": ["lenet5"], "clients": [100], "lowerings": ["auto"]},
    "experiments": {},
    "gpu": {},
    "async": {},
    "natural": {},
    "language": {},
    "lowerings": {
        "algo": ["fedavg"],
        "models": ["lenet5", "cnn", "resnet8"],
        "clients": [100],
        "lowerings": list(LOWERING_CHOICES),
        "extra": "--local-epochs 1 --clients-per-round 4",
        "loop_clients": 2,
        "no_peer": True,
    },
}


EXPERIMENT_WORKLOADS = {  # label: run.py flags of one experiment
    "fedavg mlp C=100": ["--algo", "fedavg", "--model", "mlp", "--local-epochs", "1"],
    "dsfl lenet5 C=100": [
        "--algo", "dsfl", "--model", "lenet5", "--local-epochs", "1", "--distill-epochs", "1",
    ],
}  # fmt: skip


def gpu_plan(tiny: bool) -> list[tuple]:
    """The ``gpu`` suite's rounds: ``(label, algo, model, C, lowering, chunk, extra flags)``."""
    small = TINY_FLAGS if tiny else []  # 2 clients of a few hundred examples per round
    lab = small + (["--local-epochs", "1", "--distill-epochs", "1"] if tiny else [])
    sizes = (100, 200, 400) if tiny else (100, 1000, 10000)
    plan = [  # (label, algo, model, C, lowering, chunk, extra flags)
        *[("dsfl lab", "dsfl", "lenet5", c, "auto", None, lab) for c in sizes],
        *[("dsfl lab chunk 64", "dsfl", "lenet5", c, "auto", 64, lab) for c in sizes[1:]],
        *[("dsfl lab", "dsfl", "lenet5", sizes[0], lo, None, lab) for lo in CONV_LOWERS],
        ("fedavg cnn", "fedavg", "cnn", sizes[-1], "auto", None,
         ["--local-epochs", "1", "--batch-size", "10", "--lr", "0.05", "--partition", "iid",
          *small]),
    ]  # fmt: skip
    return plan


def run_experiment_suite(args, dataset, counts, rounds) -> list[dict]:
    """The experiments axis against separate runs (scripts/bench_experiments.py)."""
    import bench_experiments

    startup = bench_experiments.startup_seconds()
    devices = args.devices[-1]
    rows = []
    for label, flags_ in EXPERIMENT_WORKLOADS.items():
        if args.workloads and label.split()[0] not in args.workloads:
            continue
        argv = [*flags_, "--clients", str(args.clients[0]), "--partition", "dirichlet"]
        argv += ["--public-size", "10000", *args.extra.split()]
        found = bench_experiments.compare(argv, counts, rounds, dataset, devices, startup)
        bench_experiments.print_rows(label, found)
        rows += [{**r, "workload": label} for r in found]
    return rows
