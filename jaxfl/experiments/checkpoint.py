"""Orbax checkpoints of a whole simulation, and the handler that writes them.

A checkpoint holds the algorithm state (server state and every client-axis array) and a JSON
record of what else a resume needs: the round it ends, the seed, the round key's data, the
data-partition seed and the algorithm's name. Orbax writes each step into a temporary folder and
renames it when complete, so a process killed mid-save leaves the previous checkpoints intact and
never a half-written latest one; the last ``keep`` are kept. A state with a NaN or inf is never
written (:class:`jaxfl.experiments.simulation.NonFiniteError` instead), so the last checkpoint
is always good.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp

from jaxfl.experiments.simulation import NonFiniteError, all_finite

CHECKPOINT_DIR = "checkpoints"


def _manager(directory: str | Path, keep: int | None = None) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False)
    return ocp.CheckpointManager(Path(directory).resolve(), options=options)


def save(
    directory: str | Path,
    round_index: int,
    state,
    meta: dict,
    keep: int | None = None,
    check_finite: bool = True,
):
    """Write ``state`` (a pytree of arrays) and ``meta`` (JSON) as the checkpoint of round r.

    ``check_finite=False`` saves a state with NaN or inf too (a sweep, where one diverged
    experiment must not stop the others' checkpoints)."""
    if check_finite and not bool(all_finite(state)):
        raise NonFiniteError(
            f"round {round_index}: the state holds NaN or inf; not checkpointed (the last "
            "checkpoint is kept). Training diverged: try a smaller learning rate."
        )
    with _manager(directory, keep) as mgr:
        mgr.save(
            round_index,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                meta=ocp.args.JsonSave({**meta, "round": round_index}),
            ),
        )


def latest_round(directory: str | Path) -> int | None:
    """The round of the newest complete checkpoint under ``directory`` (None if there is none)."""
    if not Path(directory).is_dir():
        return None
    with _manager(directory) as mgr:
        return mgr.latest_step()


def restore(directory: str | Path, like, round_index: int | None = None):
    """Load the checkpoint of ``round_index`` (default: the newest); returns (state, meta).

    Args:
      directory: the checkpoint folder.
      like: a state (or ``jax.eval_shape`` of one) with the structure, shapes and dtypes to load.

    The arrays load onto this process's devices, whatever devices saved them: ``run.py`` uses
    one CPU device per core, so a checkpoint written on a 2-core machine must load in a
    1-device process (a test, a notebook) and the other way round. A leaf of ``like`` that is
    an array keeps its sharding; an abstract leaf loads onto the first device (replicated over
    all devices when several processes share the run), and the jitted round places it.
    """
    round_index = latest_round(directory) if round_index is None else round_index
    if round_index is None:
        raise FileNotFoundError(f"no complete checkpoint under {directory}")
    abstract = jax.tree.map(_on_this_topology, like)
    with _manager(directory) as mgr:
        try:
            restored = mgr.restore(
                round_index,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                ),
            )
        except ValueError as err:
            if "do not match" not in str(err):
                raise
            raise CheckpointMismatchError(
                f"the checkpoint of round {round_index} under {directory} holds a state of "
                "another structure than this run's (written by another version of jaxfl, or "
                "for other settings; e.g. the DP clip norm's field was 'dp' before it became "
                "'upload_state'): resume it with the version that wrote it, or start the run "
                "again in a new folder (nothing here is changed)"
            ) from None
    return restored.state, restored.meta


class CheckpointMismatchError(ValueError):
    """A checkpoint whose state does not have the structure of the run resuming it."""


def _on_this_topology(leaf) -> jax.ShapeDtypeStruct:
    sharding = getattr(leaf, "sharding", None)
    if not isinstance(leaf, jax.Array) or sharding is None:
        if jax.process_count() > 1:
            mesh = jax.sharding.Mesh(jax.devices(), ("devices",))
            sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        else:
            sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)


class Checkpointer:
    """Handler: checkpoint every ``every`` rounds and at the end of the run, keep the last ``keep``.

    Emits the ``checkpoint`` event (``round``, ``path``) after each save.
    """

    def __init__(self, directory: str | Path, every: int, keep: int = 3, meta: dict | None = None):
        if every < 1:
            raise ValueError(f"--checkpoint-every must be >= 1, got {every}")
        if keep < 1:
            raise ValueError(f"--keep-checkpoints must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.every = every
        self.keep = keep
        self.meta = dict(meta or {})
        self.last_saved: int | None = None

    def attach(self, sim) -> Checkpointer:
        sim.sync_every(self.every)  # with --rounds-per-call, blocks end where a save is due
        sim.on("round_end", lambda sim, record, state: self.save(sim, record["round"], state))
        sim.on("run_end", lambda sim, state, **_: self.save(sim, sim.round, state, force=True))
        return self

    def save(self, sim, round_index: int, state, force: bool = False) -> None:
        if round_index < 1 or round_index == self.last_saved:
            return
        if not force and round_index % self.every:
            return
        meta = {
            **self.meta,
            "seed": sim.seed,
            "round_key_data": jax.random.key_data(sim.round_key).tolist(),
            "algorithm": sim.algorithm.name,
        }
        save(self.directory, round_index, state, meta, self.keep)
        self.last_saved = round_index
        sim.emit("checkpoint", round=round_index, path=str(self.directory / str(round_index)))
