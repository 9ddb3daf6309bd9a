"""A sweep's results lines: one metrics record per experiment and evaluated round (its
algorithm, seed, setting, metrics, traffic and epsilon), the config record, and the
``metrics.jsonl`` readers and writers that resume and early stopping replay
(:mod:`jaxfl.experiments.sweep_runner` runs the sweep)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import jax
import numpy as np

from jaxfl.core.algorithm import traffic_totals
from jaxfl.core.metrics import summarize_clients
from jaxfl.mechanisms import accounting


def records(algo: str, group, block: dict, evaluated: dict, round_index: int):
    """One metrics line per experiment of ``group`` at its evaluated round ``round_index``."""
    records = []
    client_acc = np.asarray(evaluated.pop("client_acc"))
    global_client_acc = evaluated.pop("global_client_acc", None)
    for i, e in enumerate(group.experiments):
        record = {
            "algo": algo,
            "experiment": e.index,
            "seed": e.seed,
            "setting": e.label(),
            "hparams": e.hparams,
            "round": round_index,
            **{k: float(v[i, -1]) for k, v in block.items()},
            **{k: float(np.asarray(v)[i]) for k, v in evaluated.items() if np.ndim(v) == 1},
            **summarize_clients(client_acc[i], "client_acc"),
        }
        if global_client_acc is not None:
            record.update(summarize_clients(np.asarray(global_client_acc)[i], "global_client_acc"))
        record["diverged"] = not all(
            math.isfinite(v) for v in record.values() if isinstance(v, float)
        )
        records.append(record)
    return records


def add_communication(records: list[dict], algorithm) -> None:
    """Each record's cumulative ``comm_up_bytes_total`` / ``comm_down_bytes_total`` after its
    round, as a single run counts them (:func:`jaxfl.core.algorithm.traffic_totals`)."""
    for record in records:
        record.update(
            traffic_totals(
                algorithm.communication, algorithm.participants_per_round, record["round"]
            )
        )


def add_epsilon(records: list[dict], group, config: dict) -> None:
    """Each record's ``dp_epsilon`` after its round, from its experiment's own noise multiplier
    (``--sweep dp-noise=...``) and the run's accounting setting (``config["privacy"]``)."""
    setting = config.get("privacy")
    if setting is None:
        return
    for record, e in zip(records, group.experiments, strict=True):
        algo_config, _ = group.config_of(e)
        accountant = accounting.for_config(
            algo_config,
            setting["population"],
            setting["clients_per_round"],
            setting["delta"],
            setting.get("accountant"),
        )
        if accountant is not None:
            record["dp_epsilon"] = accountant.epsilon(record["round"])


def config_record(args, seeds, sweeps) -> dict:
    flag_values = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return {
        "sweep": True,
        "flags": flag_values,
        "seeds": list(seeds),
        "algorithms": {
            s.algo: {
                "experiments": [dataclasses.asdict(e) for e in s.experiments],
                "compiled_groups": [
                    {
                        "experiments": [e.index for e in g.experiments],
                        "devices": g.devices,
                        "experiment_chunk": g.chunk,
                    }
                    for g in s.groups
                ],
                "config": s.built[seeds[0]].config,
            }
            for s in sweeps
        },
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "jax_version": jax.__version__,
    }


def read_lines(path: Path) -> list[dict]:
    from jaxfl.experiments.results import read_metrics

    return read_metrics(path)


def append_lines(path: Path, records: list[dict]) -> None:
    with path.open("a") as f:
        f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        f.flush()


def rewrite_lines(path: Path, records: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    tmp.replace(path)
