#!/usr/bin/env python
"""Run one federated-learning simulation and write its results folder.

    python scripts/run.py --algo dsfl --clients 1000 --dataset synthetic --rounds 5

The results folder holds config.json (every resolved setting, the data set actually used),
metrics.jsonl (one line per evaluated round), summary.json and accuracy.png.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout too

from jaxfl import experiment  # noqa: E402
from jaxfl.data import DataUnavailableError, PartitionError  # noqa: E402
from jaxfl.io import ResultsExistError, ResultsWriter, check_results_dir, default_results_dir  # noqa: E402
from jaxfl.simulation import NonFiniteError, Simulation, progress_bar  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = experiment.parse(argv, description=__doc__.split("\n\n")[0])
    try:
        experiment.validate(args)
        out = Path(args.out) if args.out else default_results_dir(args.algo, args.dataset)
        check_results_dir(out)
        start = time.perf_counter()
        exp = experiment.build(args)
        writer = ResultsWriter(out, {**exp.config, "out": str(out)})
    except (
        experiment.ConfigError,
        PartitionError,
        DataUnavailableError,
        ResultsExistError,
        ValueError,
    ) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    info = exp.data_info
    print(
        f"{exp.algorithm.name} on {info['dataset']} ({info['source']}): {info['num_clients']} "
        f"clients, partition {info['partition']}, model {exp.config['model']} "
        f"({exp.model.num_params:,} params), {exp.config['clients_per_round']} per round "
        f"-> {out}"
    )
    sim = Simulation(exp.algorithm, args.rounds, args.eval_every, args.seed)
    writer.attach(sim)
    progress_bar(sim)
    last_client_acc = {}
    sim.on("evaluate", lambda client_acc, **_: last_client_acc.update(value=client_acc))
    try:
        _, history = sim.run()
    except NonFiniteError as err:
        writer.finish({"status": "failed", "error": str(err)}, last_client_acc.get("value"))
        print(f"error: {err}", file=sys.stderr)
        return 3
    final = history[-1]
    summary = {
        "status": "completed",
        "rounds": args.rounds,
        "wall_time_s": time.perf_counter() - start,
        "final": final,
        "best_test_acc": max(h.get("test_acc", 0.0) for h in history),
        "communication_per_client_per_round": exp.algorithm.communication,
    }
    writer.finish(summary, last_client_acc.get("value"))
    print(
        f"round {final['round']}: test_acc {final['test_acc']:.4f}, clients' mean accuracy "
        f"{final['client_acc_mean']:.4f}; results in {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
