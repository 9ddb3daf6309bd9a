"""The fault flags (dropout, stragglers, adversaries; :mod:`jaxfl.mechanisms.faults`); no JAX.

Their values fill :class:`jaxfl.mechanisms.faults.FaultConfig`, whose fields have the same names;
the checks that depend on the algorithm are :meth:`jaxfl.mechanisms.faults.FaultConfig.check`'s.
"""

from __future__ import annotations

from jaxfl.core.names import ATTACKS


def add_fault_arguments(a) -> None:
    """Add the fault flags with ``a = parser.add_argument``."""
    a(
        "--dropout",
        type=float,
        default=0.0,
        help="faults: probability that a sampled client's upload is lost each round; "
        "aggregation uses only received updates (default 0)",
    )
    a(
        "--min-received",
        type=int,
        default=1,
        help="faults: apply a round only if at least this many updates arrive (default 1)",
    )
    a(
        "--straggler-fraction",
        type=float,
        default=0.0,
        help="faults: fraction of the sampled clients that are stragglers each round (default 0)",
    )
    a(
        "--straggler-work",
        type=float,
        default=0.5,
        help="faults: fraction of its local steps a straggler completes (default 0.5)",
    )
    a(
        "--adversary-fraction",
        type=float,
        default=0.0,
        help="faults: fraction of all clients that are adversarial, a fixed set drawn from "
        "--seed (default 0)",
    )
    a(
        "--attack",
        default="none",
        help=f"faults: what adversaries do: {', '.join(ATTACKS)} (label_flip: any algorithm; "
        "random_logits, scaled_logits: dsfl; scaled_update: fedavg; default none)",
    )
    a(
        "--attack-scale",
        type=float,
        default=10.0,
        help="faults: the factor of scaled_update/scaled_logits, the std of random_logits "
        "(default 10)",
    )
