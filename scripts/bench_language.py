"""``scripts/bench.py --suite language``: Shakespeare next-character prediction with the
character LSTM (``--model charlstm``: embedding 8, two LSTM layers of 256, 90 tokens, rows of
80), FedAvg with Reddi et al.'s Shakespeare client settings (batch 4, one local epoch, client
learning rate 1), 10 and 100 clients per round.

The federation is ``shakespeare_synthetic``'s generated roles (715 of them, TFF's and FedJAX's
count of Shakespeare's roles; timing needs no real text), written in FedJAX's SQLite format
(``shakespeare_{train,test}.sqlite``, a ``snippets`` column of byte strings per role) and read
back by jaxfl as ``--dataset shakespeare``. Each row:

- ``jaxfl s``: the compiled round on each ``--devices`` count (median of ``--rounds``);
- ``loop s``: the per-client Python loop over the same jitted one-client function, one device,
  every sampled client timed;
- ``FedJAX s``: with ``--fedjax-python``, FedJAX itself (``benchmarks/fedjax_shakespeare.py``:
  ``fedjax.datasets.shakespeare.preprocess_client`` and ``fedjax.models.shakespeare``'s LSTM on
  the same file, its ``federated_averaging``);
- ``% GEMM``: the round's useful FLOPs (the sampled clients' rows of tokens, forward and
  backward, counted by hand: :func:`jaxfl.models.recurrent.charlstm_train_flops`, since XLA's
  cost analysis counts a scan's body once) over the round time and this device's dense float32
  matmul rate.

Before the rows, the LSTM layer's formulation is timed: one vmapped training step of 10
clients' charlstm on a batch of 4, with jaxfl's layer (every step's input matmul hoisted out of
the recurrence, :mod:`jaxfl.models.recurrent`) against flax's ``OptimizedLSTMCell`` scanned by
``nn.RNN`` (input and recurrent matmuls inside each step). ``--tiny``: 40 roles, 4 per round,
``charlstm-32``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from bench_loop import time_loop
from bench_natural import _time_round, run_fedjax
from flax import linen as nn

from jaxfl.cli import flags
from jaxfl.core import train
from jaxfl.core.client_axis import client_mesh, replicate, use_mesh
from jaxfl.data.natural import fedjax_sqlite, shakespeare_synthetic
from jaxfl.experiments import builder
from jaxfl.models import get_model
from jaxfl.models.recurrent import charlstm_train_flops

FEDJAX_RUNNER = Path(__file__).resolve().parents[1] / "benchmarks" / "fedjax_shakespeare.py"
ROLES = 715


class _FlaxCellLSTM(nn.Module):
    """The character LSTM with flax's own cell, for the formulation comparison only."""

    hidden: int
    vocab: int = 90

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(self.vocab, 8)(tokens.astype(jnp.int32))
        for _ in range(2):
            x = nn.RNN(nn.OptimizedLSTMCell(self.hidden))(x)
        return nn.Dense(self.vocab)(x)


def _grad_step(apply, batch: int):
    """One client's gradient on a batch of token rows (targets: the inputs, for shapes)."""
    mask = jnp.ones((batch,), bool)
    return lambda p, x: jax.grad(lambda q: train.batch_loss(apply(q, x), x, mask))(p)


def _time_step(apply, params, clients: int, batch: int, repeats: int = 5) -> float:
    """Seconds of one SGD step vmapped over ``clients`` clients' own parameters."""
    stacked = jax.tree.map(lambda p: jnp.broadcast_to(p, (clients, *p.shape)), params)
    x = jnp.zeros((clients, batch, 80), jnp.int32) + 5
    grad = _grad_step(apply, batch)

    def step(p, x):
        return jax.tree.map(lambda a, g: a - 0.1 * g, p, grad(p, x))

    fn = jax.jit(jax.vmap(step))
    jax.block_until_ready(fn(stacked, x))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(stacked, x))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def lstm_formulations(hidden: int, gemm: float) -> list[dict]:
    """jaxfl's hoisted LSTM against flax's per-step cell: one vmapped step, 10 clients."""
    rows = []
    print(f"\nLSTM formulation, charlstm-{hidden}, 10 clients x batch 4 x 80 tokens, one SGD step")
    ours = get_model(f"charlstm-{hidden}", (80,), 90)
    flax_cell = _FlaxCellLSTM(hidden)
    flax_params = flax_cell.init(jax.random.key(0), jnp.zeros((1, 80), jnp.int32))["params"]
    for name, apply, params in (
        ("hoisted input matmul (jaxfl)", ours.apply, ours.init(jax.random.key(0))),
        ("flax OptimizedLSTMCell", lambda p, x: flax_cell.apply({"params": p}, x), flax_params),
    ):
        seconds = _time_step(apply, params, 10, 4)
        flops = charlstm_train_flops(10 * 4 * 80, 90, hidden)
        rows.append(
            {"formulation": name, "step_s": seconds, "gemm_fraction": flops / seconds / gemm}
        )
        print(f"  {name:<30} {1000 * seconds:>8.2f} ms  {100 * flops / seconds / gemm:>5.1f}% GEMM")
    return rows


def write_federation(folder: Path, roles: int) -> None:
    """``roles`` generated roles as FedJAX's ``shakespeare_{train,test}.sqlite``."""
    train_roles, test_roles = shakespeare_synthetic.generate(roles, seed=0)
    for split, store in (("train", train_roles), ("test", test_roles)):
        fedjax_sqlite.write(folder / f"shakespeare_{split}.sqlite", store)


def run_language_suite(args, gemm: float) -> list[dict]:
    """The suite's rows (see the module docstring); prints the tables as it goes."""
    hidden = 32 if args.tiny else 256
    roles, cohorts = (40, (4,)) if args.tiny else (ROLES, (10, 100))
    model = f"charlstm-{hidden}"
    rows = lstm_formulations(hidden, gemm)
    print(
        f"\nFedAvg, {model}, batch 4, 1 local epoch, Shakespeare-like roles: {roles}\n"
        f"{'m':>4} {'dev':>3} {'eff':>5} {'jaxfl s':>8} {'% GEMM':>7} {'loop s':>8} "
        f"{'loop/jaxfl':>10} {'FedJAX s':>9} {'FedJAX/jaxfl':>12}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        write_federation(Path(tmp), roles)
        for m in cohorts:
            peer = {}
            if args.fedjax_python:  # FedJAX's own Shakespeare FedAvg on the same file
                train_file = Path(tmp) / "shakespeare_train.sqlite"
                peer = run_fedjax(args.fedjax_python, train_file, m, args.rounds, FEDJAX_RUNNER)
            argv = ["--algo", "fedavg", "--dataset", "shakespeare", "--data-dir", tmp]
            argv += ["--clients", str(roles), "--clients-per-round", str(m), "--lr", "1"]
            argv += ["--model", model, "--batch-size", "4", "--local-epochs", "1"]
            loop_s = None
            for devices in args.devices:
                with use_mesh(client_mesh(devices)):
                    exp = builder.build(flags.parse_config(argv))
                    algo = exp.algorithm
                    state = replicate(algo.init(jax.random.key(0)))
                    compile_s, round_s = _time_round(
                        algo, state, jax.random.key(1), algo.client_chunk, args.rounds
                    )
                if loop_s is None:
                    exp1 = builder.build(flags.parse_config(argv))
                    state1 = exp1.algorithm.init(jax.random.key(0))
                    # every client, not a few scaled: the cohort is sorted by size, so its
                    # first few are its smallest
                    loop_s, _ = time_loop(exp1, state1, jax.random.key(1), m)
                per_sequence = charlstm_train_flops(80, 90, hidden)
                sequences = m * float(np.mean(np.asarray(exp.data.client_count)))
                useful = per_sequence * sequences
                row = {
                    "suite": "language",
                    "model": model,
                    "roles": roles,
                    "clients_per_round": m,
                    "devices": devices,
                    "padding_efficiency": exp.config["padding_efficiency"],
                    "compile_s": compile_s,
                    "round_s": round_s,
                    "useful_gflop": useful / 1e9,
                    "gemm_fraction": useful / round_s / gemm,
                    "loop_round_s": loop_s,
                    "loop_over_jaxfl": loop_s / round_s,
                    **peer,
                }
                fj = peer.get("fedjax_round_s")
                if fj:
                    row["fedjax_over_jaxfl"] = fj / round_s
                rows.append(row)
                print(
                    f"{m:>4} {devices:>3} {row['padding_efficiency']:>5.2f} {round_s:>8.2f} "
                    f"{100 * row['gemm_fraction']:>6.1f}% {loop_s:>8.2f} {loop_s / round_s:>10.1f} "
                    + (f"{fj:>9.2f} {fj / round_s:>12.1f}" if fj else f"{'-':>9} {'-':>12}")
                    + (
                        f"  FedJAX failed: {peer['fedjax_error']}" if "fedjax_error" in peer else ""
                    ),
                    flush=True,
                )
    return rows
