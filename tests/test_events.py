"""The host loop's events: order, triggers, stopping, and the non-finite guard."""

import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import pytest

from jaxfl.experiments import checkpoint, events
from jaxfl.experiments.simulation import NonFiniteError, Simulation


def scripted_algorithm(test_acc):
    """A stand-in algorithm whose round r reports ``test_acc[r - 1]``; its state is the round."""

    def one_round(state, key):
        return (
            {"round": state["round"] + 1, "w": state["w"] + 1.0},
            {"train_loss": jnp.float32(1.0)},
        )

    def run_rounds(state, round_key, first, num_rounds=1):  # calls ``round`` (tests patch it)
        losses = []
        for r in range(first, first + num_rounds):
            state, metrics = algo.round(state, jax.random.fold_in(round_key, r))
            losses.append(metrics["train_loss"])
        return state, {"train_loss": jnp.stack(losses)}

    algo = SimpleNamespace(
        name="scripted",
        init=lambda key: {"round": jnp.int32(0), "w": jnp.zeros(3)},
        round=one_round,
        run_rounds=run_rounds,
        evaluate=lambda state: {
            "test_acc": jnp.float32(test_acc[int(state["round"]) - 1]),
            "client_acc": jnp.full((4,), test_acc[int(state["round"]) - 1]),
        },
        communication={"up_bytes": 4, "down_bytes": 8},
        clients_per_round=2,
    )
    return algo


def test_events_fire_in_order_with_their_payloads():
    sim = Simulation(scripted_algorithm([0.1, 0.2, 0.3]), rounds=3, eval_every=2)
    log = []
    sim.on("run_start", lambda start_round, **_: log.append(("run_start", start_round)))
    sim.on("evaluate", lambda record, **_: log.append(("evaluate", record["round"])))
    sim.on("round_end", lambda record, **_: log.append(("round_end", record["round"])))
    sim.on("round_end", lambda record, **_: log.append(("second", record["round"])))
    sim.on("run_end", lambda history, stop_reason, **_: log.append(("run_end", len(history))))
    _, history = sim.run()
    assert log == [
        ("run_start", 1),
        ("round_end", 1),
        ("second", 1),
        ("evaluate", 2),
        ("round_end", 2),
        ("second", 2),
        ("evaluate", 3),  # the last round is always evaluated
        ("round_end", 3),
        ("second", 3),
        ("run_end", 2),
    ]
    assert [h["round"] for h in history] == [2, 3]
    assert history[-1]["comm_up_bytes_total"] == 3 * 2 * 4


def test_unknown_event_is_a_clear_error():
    sim = Simulation(scripted_algorithm([0.1]), rounds=1)
    with pytest.raises(ValueError, match="unknown event 'round_start'; allowed: run_start"):
        sim.on("round_start", print)


def test_every_trigger():
    sim = Simulation(scripted_algorithm([0.0] * 7), rounds=7)
    seen = []
    sim.on("round_end", lambda record, **_: seen.append(record["round"]), when=events.every(3))
    sim.run()
    assert seen == [3, 6]


def test_metric_crosses_fires_once_and_stops_the_run():
    sim = Simulation(scripted_algorithm([0.1, 0.6, 0.7, 0.9, 0.95]), rounds=5)
    fired, converged = [], []
    sim.on(
        "evaluate",
        lambda record, **_: fired.append(record["round"]),
        when=events.metric_crosses("test_acc", 0.65),
    )
    events.stop_at_target(sim, "test_acc", 0.85)
    sim.on("converged", lambda round, reason, **_: converged.append((round, reason)))
    _, history = sim.run()
    assert fired == [3]
    assert converged == [(4, "test_acc 0.9000 >= 0.85")]
    assert [h["round"] for h in history] == [1, 2, 3, 4]
    assert sim.stop_reason.startswith("test_acc")


def test_early_stopping_after_patience_evaluations_without_improvement():
    # best 0.5 at round 2; rounds 3 and 4 do not beat it -> stop after round 4 with patience 2
    sim = Simulation(scripted_algorithm([0.1, 0.5, 0.4, 0.5, 0.9, 0.9]), rounds=6)
    events.early_stopping(sim, "test_acc", patience=2)
    _, history = sim.run()
    assert [h["round"] for h in history] == [1, 2, 3, 4]
    assert "no better test_acc in 2 evaluations" in sim.stop_reason


def test_stop_on_a_round_without_evaluation_still_evaluates_it():
    sim = Simulation(scripted_algorithm([0.1] * 10), rounds=10, eval_every=5)
    events.time_budget(sim, 0.0)  # spent at once: stop after round 1
    _, history = sim.run()
    assert [h["round"] for h in history] == [1]
    assert "time budget" in sim.stop_reason


def test_no_improvement_trigger_counts_consecutive_stale_evaluations():
    trigger = events.no_improvement("loss", patience=2, mode="min")
    fires = [trigger(None, record={"loss": v}) for v in [3.0, 2.0, 2.5, 1.0, 1.5, 1.2, 0.5]]
    assert fires == [False, False, False, False, False, True, False]


def test_non_finite_metric_names_round_and_metric_and_keeps_last_good_checkpoint(tmp_path):
    sim = Simulation(scripted_algorithm([0.1, 0.2, math.nan, 0.4]), rounds=4)
    checkpoint.Checkpointer(tmp_path / "ckpt", every=1).attach(sim)
    with pytest.raises(NonFiniteError, match="round 3: metric 'test_acc' is nan"):
        sim.run()
    assert checkpoint.latest_round(tmp_path / "ckpt") == 2
    state, meta = checkpoint.restore(tmp_path / "ckpt", sim.algorithm.init(None))
    assert int(state["round"]) == 2 and meta["round"] == 2 and meta["seed"] == 0


def test_a_non_finite_state_is_never_checkpointed(tmp_path):
    good = {"w": jnp.ones(3)}
    checkpoint.save(tmp_path, 1, good, {})
    with pytest.raises(NonFiniteError, match="round 2: the state holds NaN"):
        checkpoint.save(tmp_path, 2, {"w": jnp.array([1.0, jnp.nan, 0.0])}, {})
    assert checkpoint.latest_round(tmp_path) == 1


def test_checkpointer_keeps_the_last_n_and_saves_the_final_round(tmp_path):
    sim = Simulation(scripted_algorithm([0.1] * 7), rounds=7)
    saved = []
    sim.on("checkpoint", lambda round, path, **_: saved.append(round))
    checkpoint.Checkpointer(tmp_path, every=3, keep=2).attach(sim)
    sim.run()
    assert saved == [3, 6, 7]
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [6, 7]


def test_tensorboard_handler_writes_event_files(tmp_path):
    pytest.importorskip("tensorboardX")
    sim = Simulation(scripted_algorithm([0.1, 0.2]), rounds=2)
    events.tensorboard(sim, str(tmp_path / "tb"))
    sim.run()
    files = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert files and files[0].stat().st_size > 0


def test_non_finite_parameters_stop_the_run_naming_the_round():
    algo = scripted_algorithm([0.1] * 4)
    honest_round = algo.round
    algo.round = lambda state, key: honest_round(
        {**state, "w": state["w"] * (jnp.inf if int(state["round"]) == 1 else 1.0)}, key
    )
    with pytest.raises(NonFiniteError, match="round 2: the state .model parameters. holds NaN"):
        Simulation(algo, rounds=4).run()
