#!/usr/bin/env python
"""Incentives: the data-sharing game, delivering a chosen accuracy, and IPR of FedAvg vs IncFL.

    python scripts/incentives.py game --costs 1e-4,2e-4,5e-4
    python scripts/incentives.py game --measured --data-dir ../shared/data/mnist
    python scripts/incentives.py degrade --data-dir ../shared/data/mnist
    python scripts/incentives.py ipr --dataset synthetic --clients 100 --rounds 20

``game`` prints each agent's contribution, delivered accuracy and utility when everyone trains
alone, under naive federation (free riding) and under accuracy shaping (Karimireddy et al. 2022),
and plots total data and utilities (OUT/game.png, OUT/game.json). ``--measured`` replaces the
generalization-bound a(m) with an accuracy curve the simulator measures on the data set.
``degrade`` trains a model, then serves it at lower target accuracies by mixing its predictions
with random labels and reports target against delivered accuracy. ``ipr`` runs FedAvg and IncFL
(Cho et al. 2022) through scripts/run.py on the same split and plots the incentivized
participation rate over rounds (OUT/ipr.png); all further flags are run.py's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from jaxfl.experiments.results import check_results_dir, read_metrics, write_json  # noqa: E402
from reproductions import incentives  # noqa: E402


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _costs(text: str) -> list[float]:
    try:
        costs = [float(c) for c in text.split(",") if c.strip()]
    except ValueError:
        costs = []
    if not costs or min(costs) <= 0:
        raise SystemExit(f"error: --costs {text!r}: comma-separated numbers > 0, e.g. 1e-4,2e-4")
    return costs


def game(args, out: Path) -> dict:
    costs = _costs(args.costs)
    if args.measured:
        from jaxfl.data import load_dataset

        dataset = load_dataset(args.dataset, args.data_dir)
        sizes = np.unique(np.geomspace(20, len(dataset.train_y), 10).astype(int))
        acc = incentives.measure_accuracy_curve(
            dataset, sizes, model_name=args.curve_model, epochs=args.curve_epochs, seed=args.seed
        )
        a = incentives.interpolated_accuracy(sizes, acc)
        curve = {"form": "measured", "sizes": sizes.tolist(), "accuracy": acc.tolist()}
        m_max = float(len(dataset.train_y))
    else:
        a = incentives.bound_accuracy(args.a_opt, args.k)
        curve = {"form": "bound", "a_opt": args.a_opt, "k": args.k}
        m_max = 1e7
    outcomes = [
        incentives.equilibrium(a, costs, mech, eps=args.eps, m_max=m_max)
        for mech in incentives.MECHANISMS
    ]
    print(f"a(m): {curve['form']}; costs {costs}")
    print(f"{'mechanism':9} {'total m':>10}  per agent: m_i / accuracy / utility")
    for o in outcomes:
        cells = "  ".join(
            f"{m:8.0f}/{acc:.3f}/{u:+.3f}"
            for m, acc, u in zip(o.contributions, o.accuracy, o.utility, strict=True)
        )
        print(f"{o.mechanism:9} {o.total:>10.0f}  {cells}")
    plt = _plt()
    fig, (ax_m, ax_u) = plt.subplots(1, 2, figsize=(10, 4))
    ax_m.bar([o.mechanism for o in outcomes], [o.total for o in outcomes], color="C0")
    ax_m.set(title="Total contributed data", ylabel="data points")
    width = 0.25
    agents = np.arange(len(costs))
    for j, o in enumerate(outcomes):
        ax_u.bar(agents + (j - 1) * width, o.utility, width, label=o.mechanism)
    ax_u.set(
        title="Utility per agent (accuracy - c_i m_i)",
        xlabel="agent (cost)",
        xticks=agents,
        xticklabels=[f"{i} ({c:g})" for i, c in enumerate(costs)],
    )
    ax_u.legend()
    fig.tight_layout()
    fig.savefig(out / "game.png", dpi=110)
    plt.close(fig)
    return {"curve": curve, "costs": costs, "outcomes": [o.as_dict() for o in outcomes]}


def degrade(args, out: Path) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxfl.data import load_dataset

    dataset = load_dataset(args.dataset, args.data_dir)
    preds, model_acc = _predictions(dataset, args)
    rows = []
    key = jax.random.key(args.seed)
    y = jnp.asarray(dataset.test_y)
    for i, target in enumerate(float(t) for t in args.targets.split(",")):
        q = incentives.mixing_probability(model_acc, target, dataset.num_classes)
        served = incentives.degrade(preds, jax.random.fold_in(key, i), q, dataset.num_classes)
        delivered = float(jnp.mean(served == y))
        rows.append({"target": target, "mixing_q": q, "delivered": delivered})
        print(f"target {target:.3f}  q {q:.3f}  delivered {delivered:.4f}")
    return {"model_accuracy": model_acc, "rows": rows}


def _predictions(dataset, args):
    """Train ``args.curve_model`` on the whole train split: (M,) test predictions, accuracy."""
    import jax
    import jax.numpy as jnp
    import optax

    from jaxfl.core import train
    from jaxfl.models import get_model

    model = get_model(args.curve_model, dataset.feature_shape, dataset.num_classes)
    params = model.init(jax.random.key(args.seed))
    x, y = jnp.asarray(dataset.train_x), jnp.asarray(dataset.train_y)
    n = len(dataset.train_y)
    loss = train.client_data_loss(model.apply, x, y, jnp.arange(n, dtype=jnp.int32))
    params = jax.jit(
        lambda p: (
            train.sgd_epochs(
                loss, optax.sgd(0.1), p, jax.random.key(args.seed + 1), n, n, 50, args.curve_epochs
            ).params
        )
    )(params)
    logits = train.batched_apply(model.apply, params, jnp.asarray(dataset.test_x))
    preds = jnp.argmax(logits, -1)
    model_acc = float(jnp.mean(preds == jnp.asarray(dataset.test_y)))
    print(f"{args.curve_model} trained on {n} examples: test accuracy {model_acc:.4f}")
    return preds, model_acc


def ipr(args, run_argv: list[str], out: Path) -> dict:
    from jaxfl.algorithms import incfl
    from jaxfl.cli import run

    histories = {}
    if not any(a.startswith("--client-val-fraction") for a in run_argv):
        # IncFL's default; given to both so that they share one split
        run_argv = [*run_argv, "--client-val-fraction", str(incfl.SPEC.validation_fraction)]
    for algo in ("fedavg", "incfl"):
        code = run.main([*run_argv, "--algo", algo, "--out", str(out / algo), "--compare-local"])
        if code != 0:
            raise SystemExit(code)
        histories[algo] = read_metrics(out / algo / "metrics.jsonl")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for algo, history in histories.items():
        ax.plot([h["round"] for h in history], [h["ipr"] for h in history], marker="o", ms=3,
                label=algo)  # fmt: skip
    ax.set(xlabel="round", ylabel="IPR (fraction better off than alone)", title="Incentivized "
           "participation rate")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "ipr.png", dpi=110)
    plt.close(fig)
    final = {}
    for algo, history in histories.items():
        last = history[-1]
        final[algo] = {
            k: last[k] for k in ("ipr", "ipr_seen", "ipr_unseen", "test_acc") if k in last
        }
        print(f"{algo:7} " + "  ".join(f"{k} {v:.3f}" for k, v in final[algo].items()))
    return {"final": final}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("game", "degrade", "ipr"), help="what to run (see above)")
    p.add_argument(
        "--out", default=None, help="results folder (default results/incentives-CMD-TIME)"
    )
    p.add_argument("--costs", default="1e-4,2e-4,5e-4", help="game: agents' marginal data costs")
    p.add_argument("--eps", type=float, default=1e-4, help="game: accuracy-shaping margin eps")
    p.add_argument("--a-opt", type=float, default=1.0, help="game: a_opt of the bound a(m)")
    p.add_argument("--k", type=float, default=10.0, help="game: complexity k of the bound a(m)")
    p.add_argument(
        "--measured",
        action="store_true",
        help="game: use an accuracy curve measured on --dataset instead of the bound",
    )
    p.add_argument("--targets", default="0.85,0.7,0.5,0.3", help="degrade: target accuracies")
    p.add_argument(
        "--curve-model", default="logreg", help="game --measured, degrade: the model trained"
    )
    p.add_argument(
        "--curve-epochs", type=int, default=1, help="game --measured, degrade: its epochs"
    )
    p.add_argument("--seed", type=int, default=0, help="seed (passed on to run.py for ipr)")
    args, rest = p.parse_known_args(argv)
    if args.command != "ipr":
        q = argparse.ArgumentParser()
        q.add_argument("--dataset", default="mnist")
        q.add_argument("--data-dir", default=None)
        extra = q.parse_args(rest)
        args.dataset, args.data_dir = extra.dataset, extra.data_dir
    out = Path(args.out or f"results/incentives-{args.command}-{time.strftime('%Y%m%d-%H%M%S')}")
    check_results_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    if args.command == "game":
        record = game(args, out)
    elif args.command == "degrade":
        record = degrade(args, out)
    else:
        record = ipr(args, [*rest, "--seed", str(args.seed)], out)
    write_json(out / f"{args.command}.json", record)
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
