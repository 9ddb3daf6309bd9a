"""Stopping a run gracefully on Ctrl-C (SIGINT) or SIGTERM, for one experiment and for sweeps.

A cluster scheduler or a preempted cloud VM sends SIGTERM and waits a grace period before
SIGKILL; a user presses Ctrl-C. Both mean "stop soon, keep the work": the first signal asks the
host loop to stop after the round (or compiled block) in flight, which is then checkpointed; a
second signal quits at once (``KeyboardInterrupt``), leaving the last periodic checkpoint. The
computation in flight cannot be cut short (XLA does not cancel a running program) and the state
before it cannot be saved instead (it was donated to the computation in flight).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable

# the exit status a shell gives a process ended by the signal (128 + its number)
EXIT_STATUS = {"SIGINT": 130, "SIGTERM": 143}


class StopSignals:
    """Within ``with StopSignals(on_first) as stops``: the first SIGINT or SIGTERM calls
    ``on_first(name)`` (``"SIGINT"`` or ``"SIGTERM"``) and is remembered in ``stops.received``;
    a second one raises ``KeyboardInterrupt``. Handlers are installed only in the main thread
    (the only one Python delivers signals to) and the previous ones are restored on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, on_first: Callable[[str], None]):
        self.on_first = on_first
        self.received: str | None = None
        self.previous: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self.handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}

    def handle(self, signum=signal.SIGINT, frame=None) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        self.on_first(self.received)

    @property
    def exit_status(self) -> int:
        """130 after SIGINT, 143 after SIGTERM (what a shell reports for the signal)."""
        return EXIT_STATUS.get(self.received or "SIGINT", 130)


def announce(name: str, what: str) -> None:
    """One line on stderr saying what the first signal does."""
    key = "Ctrl-C" if name == "SIGINT" else name
    print(
        f"\n{key}: finishing {what}, then checkpointing it and stopping; {key} again quits at once",
        file=sys.stderr,
        flush=True,
    )
