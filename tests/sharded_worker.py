"""Run by tests/test_scale.py in a subprocess that has 8 CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=8 must be set before JAX starts, so it cannot
run inside the pytest process). Prints one JSON object: case -> max |difference| between the
sharded computation and its reference (a per-client Python loop, or the same run on one device).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jaxfl.algorithms import ALGORITHMS  # noqa: E402
from jaxfl.cli import flags  # noqa: E402
from jaxfl.configs.run import RunConfig  # noqa: E402
from jaxfl.core.algorithm import loop_clients  # noqa: E402
from jaxfl.core.client_axis import (  # noqa: E402
    client_devices,
    client_mesh,
    map_clients,
    replicate,
    sum_clients,
    use_mesh,
)
from jaxfl.experiments import builder


def max_diff(a, b) -> float:
    return max(
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def map_clients_cases(out: dict) -> None:
    """Sharded map_clients and sum_clients (any m, chunk, device count) vs a per-client Python
    loop."""
    w = jax.random.normal(jax.random.key(0), (4, 3))

    def one_client(shared, x, key):  # shared weights, a per-client key
        h = jnp.tanh(x @ shared)
        return {"sum": h.sum(0) + jax.random.normal(key, (3,)), "max": h.max()}

    for m in (3, 13):  # fewer clients than devices; uneven over 3 and over 8
        xs = jax.random.normal(jax.random.key(m), (m, 5, 4))
        keys = jax.random.split(jax.random.key(100 + m), m)
        reference = loop_clients(one_client, w, xs, keys)
        for n in (3, 8):
            for chunk in (None, 2):
                with use_mesh(client_mesh(n)):
                    assert client_devices() == n
                    mapped = jax.jit(
                        lambda w, xs, keys, chunk=chunk: map_clients(
                            lambda x, k: one_client(w, x, k), xs, keys, chunk_size=chunk
                        )
                    )(w, xs, keys)
                    summed = jax.jit(
                        lambda w, xs, keys, chunk=chunk: sum_clients(
                            lambda x, k: one_client(w, x, k), xs, keys, chunk_size=chunk
                        )
                    )(w, xs, keys)
                out[f"map_clients m={m} devices={n} chunk={chunk}"] = max_diff(mapped, reference)
                out[f"sum_clients m={m} devices={n} chunk={chunk}"] = max_diff(
                    summed, jax.tree.map(lambda x: x.sum(0), reference)
                )


RUNS = {  # name: run.py flags (2 rounds on the embedded data, small everything)
    # with DP and adaptive clipping: the clip inside the sharded client map, the noise after
    # the cross-device sum (the plain weighted mean differs only in its weights)
    "fedavg C=13 m=11 chunk=2 DP": [
        "--algo", "fedavg", "--clients", "13", "--clients-per-round", "11", "--client-chunk", "2",
        "--dp-clip", "0.5", "--dp-noise", "1", "--dp-clip-quantile", "0.5",
        "--dp-clip-count-noise", "1",
    ],
    "dsfl C=13": ["--algo", "dsfl", "--clients", "13", "--public-per-round", "64"],
    "fedmd groups C=10 (two phases)": [
        "--algo", "fedmd", "--clients", "10", "--public-per-round", "64", "--models",
        "mlp:1,logreg:1", "--fedmd-public-epochs", "1", "--fedmd-private-epochs", "1",
    ],
}  # fmt: skip


def build(argv):
    args = flags.parse(
        [
            *argv,
            "--dataset",
            "synthetic",
            "--local-epochs",
            "1",
            "--batch-size",
            "10",
            "--rounds",
            "2",
        ]
        + ([] if "--models" in argv else ["--model", "mlp"])
    )
    exp = builder.build(RunConfig.from_flags(args))
    if args.algo == "fedmd":  # SGD: Adam turns 1e-7 summation noise into lr-sized steps
        module = ALGORITHMS["fedmd"]
        algo = module.make(
            exp.algorithm_config,
            exp.data,
            exp.groups,
            seed=args.seed,
            client_optimizer=optax.sgd(0.05),
        )
        exp = dataclasses.replace(exp, algorithm=algo)
    return exp


def two_rounds(exp, scanned: bool):
    algo = exp.algorithm
    state = replicate(algo.init(jax.random.key(0)))
    if scanned:
        state, metrics = algo.run_rounds(state, jax.random.key(7), 1, 2)
    else:
        for r in (1, 2):
            state, metrics = algo.round(state, jax.random.fold_in(jax.random.key(7), r))
    return state, metrics, algo.evaluate(state)


def algorithm_cases(out: dict) -> None:
    """The same two rounds (and evaluation) on one device and sharded over 8."""
    for name, argv in RUNS.items():
        one = two_rounds(build(argv), scanned=False)
        with use_mesh(client_mesh(8)):
            exp = build(argv)
            assert exp.config["client_devices"] == 8
            eight = two_rounds(exp, scanned=False)
            out[f"{name} devices=8"] = max_diff(one, eight)
            if name == "dsfl C=13":  # rounds scanned in one call, sharded
                scanned = two_rounds(exp, scanned=True)
                out[f"{name} devices=8 run_rounds"] = max_diff(
                    (one[0], one[2]), (scanned[0], scanned[2])
                )


if __name__ == "__main__":
    assert jax.device_count() == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
    results: dict = {}
    map_clients_cases(results)
    algorithm_cases(results)
    print(json.dumps(results))
