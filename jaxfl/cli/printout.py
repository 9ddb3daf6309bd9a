"""What ``jaxfl run`` prints for a reader: each metric explained with its course over the
rounds, the participation, the privacy reached, and an estimate of a round's time before the
first one (a model too slow for the device is said before the wait, not after)."""

from __future__ import annotations

import numpy as np

from jaxfl.experiments import flops

SLOW_ROUND_S = 60.0


def round_time_estimate(exp, rounds: int) -> str:
    """One line: at least how long a round (and the run) will take here, from the round's FLOPs
    and this device's measured matmul rate, with what to change when that is slow."""
    try:
        seconds, round_flops, rate = flops.estimate_round_seconds(exp)
    except Exception as err:  # an estimate must never stop a run
        return f"(no round-time estimate: {type(err).__name__})"
    line = (
        f"estimate: at least {seconds:,.1f} s per round ({round_flops / 1e9:,.0f} GFLOP of "
        f"training at this device's {rate / 1e9:,.0f} GFLOP/s dense-matmul speed; a round "
        "usually takes 2-3x that)"
    )
    if seconds * rounds > 60:
        line += f", at least {seconds * rounds / 60:,.0f} min for {rounds} rounds"
    if seconds > SLOW_ROUND_S:
        line += (
            "\n  slow on this device: a smaller --model, fewer --clients-per-round or "
            "--local-epochs, or a GPU/TPU would be faster; Ctrl-C stops after the current round"
        )
    return line


def privacy_line(record: dict, args) -> str:
    """What the DP setting is and the epsilon it reaches (jaxfl.mechanisms.accounting)."""
    noise = record["noise_multiplier"]
    how = f"calibrated to epsilon {args.dp_epsilon:g}" if args.dp_epsilon is not None else "given"
    line = (
        f"privacy: each upload clipped to L2 norm {args.dp_clip:g}"
        + (f" (adaptive, quantile {args.dp_clip_quantile:g})" if args.dp_clip_quantile else "")
        + f", noise multiplier {noise:.4g} ({how}), {record['clients_per_round']} of "
        f"{record['population']} clients sampled per round"
        + (" in expectation (Poisson)" if record.get("participation") == "poisson" else "")
    )
    if record["epsilon_planned"] is None:
        return line + "; no noise: epsilon is infinite (clipping only)"
    return line + (
        f"; ({record['epsilon_planned']:.3g}, {record['delta']:.2g})-DP after {args.rounds} "
        f"rounds (user level; {record['epsilon_of']}, dp-accounting)"
    )


def majority_share(test_y) -> float:
    """The accuracy of always predicting the most frequent test label (target token, pad and
    padding rows excluded, on a language task): the baseline a model must beat."""
    y = np.asarray(test_y)
    y = y[y > 0] if y.ndim == 2 else y[y >= 0]
    counts = np.bincount(y.ravel()) if y.size else np.zeros(1)
    return float(counts.max() / max(counts.sum(), 1))


def explained(
    history: list[dict],
    num_classes: int,
    epsilon_of: str | None = None,
    majority: float | None = None,
) -> str:
    """What the printed numbers mean, with their course over the rounds (learning visible).
    ``majority``: the accuracy of always predicting the most frequent test target, given for
    the language tasks (their chance level 1/V is far below it)."""
    lines = []
    if majority is not None and "test_acc" in history[-1]:  # a language task
        lines.append(
            "  test_acc: the server (global) model's next-token accuracy on the held-out test "
            f"text, pad targets excluded (chance 1/{num_classes} = {1 / num_classes:.3f}; "
            f"always the most frequent {majority:.2f}); {course(history, 'test_acc')}"
        )
    elif "test_acc" in history[-1]:
        lines.append(
            f"  test_acc: the server (global) model on the held-out test set "
            f"(chance {1 / num_classes:.2f}); {course(history, 'test_acc')}"
        )
    if "test_perplexity" in history[-1]:
        lines.append(
            "  test_perplexity: exp of the mean cross-entropy per target token on the test text "
            f"(a uniform guess: {num_classes}); {course(history, 'test_perplexity', digits=1)}"
        )
    if "client_acc_mean" in history[-1]:
        lines.append(
            "  client_acc_mean / client_acc_p10: the model each client ends with (its own, or "
            "the global one where the algorithm has no local model) on the client's own test "
            "split, mean and 10th percentile over clients; mean "
            + course(history, "client_acc_mean")
        )
    if "sim_time" in history[-1]:
        lines.append(
            "  sim_time: simulated seconds on the virtual clock (a client's dispatch lasts its "
            "local steps x its --client-speed + --client-latency; a synchronous round waits for "
            f"its slowest client); {course(history, 'sim_time', digits=0)}"
        )
    if "staleness_mean" in history[-1]:
        lines.append(
            "  staleness: server steps between a client's download and its update's arrival "
            "(histogram in summary.json and staleness.png); mean "
            + course(history, "staleness_mean")
        )
    if "dp_epsilon" in history[-1]:
        lines.append(
            "  dp_epsilon: the privacy spent so far, (epsilon, delta)-DP for each client's whole "
            "data (smaller is more private"
            + (f"; {epsilon_of}" if epsilon_of else "")
            + "); "
            + course(history, "dp_epsilon")
        )
    return "\n".join(lines)


def participation(exp) -> str:
    """ "10 per round", or FedBuff's "10 in flight, 2 per server step"."""
    config = exp.algorithm_config
    if exp.algorithm.name == "fedbuff":
        from jaxfl.algorithms.fedbuff import concurrency_and_buffer

        m, k = concurrency_and_buffer(config, exp.data.num_clients)
        return f"{m} in flight, {k} per server step (a round is a server step)"
    if getattr(config, "participation", "fixed") == "poisson":
        m, slots = exp.config["clients_per_round"], exp.algorithm.clients_per_round
        return f"Poisson participation, {m} per round in expectation (at most {slots})"
    return f"{exp.config['clients_per_round']} per round"


def course(history: list[dict], metric: str, shown: int = 8, digits: int = 2) -> str:
    """``"by round: 1 0.24, 2 0.50, ..."`` for at most ``shown`` evenly spaced evaluated rounds."""
    points = [h for h in history if metric in h]
    if len(points) > shown:
        picks = sorted({round(i * (len(points) - 1) / (shown - 1)) for i in range(shown)})
        points = [points[i] for i in picks]
    return "by round: " + ", ".join(f"{h['round']} {h[metric]:.{digits}f}" for h in points)


def client_sizes(info: dict, config: dict) -> str:
    """The client-size line of a run's header: the distribution of train examples per client
    (``info``, the data's record) and the padding efficiency (``config``, the run's record:
    examples trained / example slots computed, expected over cohorts)."""
    how = "every client padded to the largest"
    if config.get("padding") == "sorted chunks":
        how = "each round's clients sorted by size, a chunk running its largest client's steps"
        if config.get("client_chunk_schedule"):
            runs = " ".join(f"{w}x{n}" for w, n in config["client_chunk_schedule"])
            how += f"; per device, chunks narrowing as sizes grow (width x count): {runs}"
    return (
        f"client sizes: {info['client_size_min']}..{info['client_size_max']} train examples "
        f"(median {info['client_size_median']:g}, p90 {info['client_size_p90']:.0f}); padding "
        f"efficiency {config['padding_efficiency']:.2f} (examples trained / example slots "
        f"computed, expected over cohorts: {how})"
    )


def data_placement(config: dict) -> str | None:
    """The header line of a run whose training split stays on the host (else None)."""
    if config.get("data_placement") != "host":
        return None
    mb = 2**20
    return (
        f"data placement host: the training split ({config['train_split_bytes'] / mb:,.1f} MB) "
        f"stays in host memory; each round sends its cohort's examples "
        f"({config['host_to_device_bytes_per_round'] / mb:,.1f} MB), the next round's "
        "gathered while this one computes"
    )
