"""The measured choice of a convolution's lowering, per layer shape (``Conv(lowering="auto")``).

Which lowering of :class:`jaxfl.models.layers.Conv` is fastest depends on the layer, not only on
the backend: on the 2-core CPU the row-Toeplitz GEMM (``rows``) wins for LeNet-5's 1-16 channel
layers, but it does W/kw times the multiply-adds, and for the FedAvg CNN's 32->64 channel layer
XLA's own convolution or im2col are 1.5-2x faster. So ``"auto"`` times every candidate on the
layer's exact shape and picks the fastest:

- the key (:class:`ConvShape`): backend, device kind, JAX version, dtype, one client's input
  (B, H, W, Cin), the kernel (kh, kw, Cout), stride, padding, and how many clients run side by
  side on one device (the width of the enclosing client vmap,
  :func:`jaxfl.core.client_axis.clients_in_flight`; 1 in a compiled loop over single clients);
- the measurement: the forward and both gradients of the layer, as a ``lax.scan`` of a few
  steps (the context the layer runs in inside a round: XLA compiles loop bodies differently),
  vmapped over that many clients with per-client kernels, best of a few timed calls;
- the cache: ``$JAXFL_CACHE/conv_lowerings.json`` (beside the converted data), one entry per
  key with every candidate's time, read once per process and merged on write. A changed shape,
  device or JAX version is a different key, so it is measured anew.

The measurement runs when a layer is traced (first compile), in a worker thread so that nothing
of the trace in progress leaks into it, at most once per key and machine. It can be turned off
(``JAXFL_CONV_TUNING=off``, the tests' default): then a cached choice is still used, and an
uncached shape gets :func:`rule_of_thumb`. Several processes (``jax.distributed``) never
measure, since hosts timing differently would compile different programs: they use the rule.
Every choice made in this process is listed by :func:`choices`; :func:`pin` fixes choices (a
resumed run reuses its own, so it computes bit for bit the same). A zoo model's ``auto``
then chooses among whole-model assignments built from these per-layer choices
(:mod:`jaxfl.models.model_tuning`), under the same cache, pins and record.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxfl.models.lowerings import conv

CANDIDATES = ("rows", "im2col", "patches", "xla")
CACHE_FILE = "conv_lowerings.json"
MAX_MEASURED_CLIENTS = 16  # wider client vmaps are timed at this width (same per-client shapes)


@dataclasses.dataclass(frozen=True)
class ConvShape:
    """What a convolution's speed depends on (the cache key). Sizes are one client's."""

    batch: int
    height: int
    width: int
    cin: int
    cout: int
    kh: int
    kw: int
    stride: int
    padding: str
    dtype: str
    clients: int = 1  # clients in flight side by side on one device (1: a loop over clients)
    training: bool = True  # forward and backward (False: forward only, e.g. evaluation)
    devices: int = 1  # devices running the same program at once (they share the host's cores)

    def key(self) -> str:
        return (
            f"{machine_key()}|{self.dtype}|"
            f"x{self.batch}x{self.height}x{self.width}x{self.cin}|"
            f"k{self.kh}x{self.kw}x{self.cout}|s{self.stride}|{self.padding}|c{self.clients}|"
            f"{'train' if self.training else 'infer'}|d{self.devices}"
        )


_lock = threading.Lock()
_table: dict[str, dict] | None = None  # the disk cache, once loaded
_pinned: dict[str, str] = {}
_used: dict[str, str] = {}


def machine_key() -> str:
    """What a timing depends on besides the work: backend, device kind, JAX version."""
    device = jax.devices()[0]
    return f"{device.platform}|{device.device_kind}|jax{jax.__version__}"


def tuning_enabled() -> bool:
    return os.environ.get("JAXFL_CONV_TUNING", "on").lower() not in ("off", "0", "false", "no")


def cache_path():
    from jaxfl.data.sources import cache_dir

    return cache_dir() / CACHE_FILE


def _load() -> dict[str, dict]:
    global _table
    if _table is None:
        try:
            _table = json.loads(cache_path().read_text())
        except (OSError, ValueError):
            _table = {}
    return _table


def _store(key: str, entry: dict) -> None:
    """Add one entry to the disk cache (merged with what other processes wrote meanwhile)."""
    path = cache_path()
    try:
        on_disk = json.loads(path.read_text())
    except (OSError, ValueError):
        on_disk = {}
    on_disk[key] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(on_disk, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError:
        pass  # a read-only cache folder: the choice still holds for this process
    _load()[key] = entry


def reset() -> None:
    """Forget the loaded cache, the pins and the record of choices (tests; a new cache dir)."""
    global _table
    with _lock:
        _table = None
        _pinned.clear()
        _used.clear()


def pin(choices: dict) -> None:
    """Use these ``{key: lowering}`` choices whatever the cache says (a resumed run's own; a
    model's key maps to a list, one lowering per conv layer)."""
    bad = {
        k: v
        for k, v in choices.items()
        if not all(c in CANDIDATES for c in ([v] if isinstance(v, str) else v))
    }
    if bad:
        raise ValueError(f"unknown conv lowerings {bad}; allowed: {', '.join(CANDIDATES)}")
    with _lock:
        _pinned.update({k: v if isinstance(v, str) else tuple(v) for k, v in choices.items()})


def cached() -> dict[str, dict]:
    """The cache's entries: ``{key: {"lowering", "seconds": {candidate: s}, "measured"}}``."""
    with _lock:
        return dict(_load())


def choices() -> dict[str, str]:
    """``{key: lowering}`` of every ``"auto"`` convolution traced in this process so far."""
    with _lock:
        return dict(_used)


def rule_of_thumb(shape: ConvShape) -> str:
    """The choice without a measurement, from the 2-core CPU's measurements (scripts/bench.py
    --suite lowerings): ``rows`` for narrow layers (at most 16 output channels: LeNet-5's whole
    training step is fastest with ``rows`` in both layers, although its second layer alone
    times faster with im2col), im2col's GEMM for wider ones; im2col on other backends (not
    measured there yet)."""
    if jax.default_backend() == "cpu" and shape.cout <= 16:
        return "rows"
    return "im2col"


def choose(shape: ConvShape) -> str:
    """The lowering for ``shape``: pinned, else cached, else measured (and cached), else the
    rule of thumb when measuring is off or several processes take part."""
    key = shape.key()
    with _lock:
        if key in _pinned:
            choice = _pinned[key]
        elif key in _load():
            choice = _load()[key]["lowering"]
        elif not tuning_enabled() or jax.process_count() > 1:
            choice = rule_of_thumb(shape)
        else:
            seconds = _measure_in_thread(shape)
            choice = min(seconds, key=seconds.get)
            _store(key, {"lowering": choice, "seconds": seconds, "measured": time.time()})
        _used[key] = choice
    return choice


def lookup(key: str):
    """The pinned, else cached, lowering of ``key`` (None if neither)."""
    with _lock:
        if key in _pinned:
            return _pinned[key]
        if key in _load():
            return _load()[key]["lowering"]
    return None


def record(key: str, choice, entry: dict | None = None) -> None:
    """Note ``choice`` as used for ``key`` (:func:`choices`); with ``entry`` (a measurement:
    ``{"lowering", "seconds", "measured"}``), cache it on disk too."""
    with _lock:
        if entry is not None:
            _store(key, entry)
        _used[key] = choice


def _measure_in_thread(shape: ConvShape) -> dict[str, float]:
    return in_fresh_thread(measure, shape)


def in_fresh_thread(fn, *args):
    """``fn(*args)`` in a fresh thread: free of the trace that asked (which may be inside a
    jit, a vmap or a per-device shard_map)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


def measure(shape: ConvShape, steps: int = 6, repeats: int = 3) -> dict[str, float]:
    """Seconds per step of each candidate lowering on ``shape``: forward and both gradients
    (forward only when not ``shape.training``), vmapped over ``min(clients,
    MAX_MEASURED_CLIENTS)`` clients with their own kernels, on ``shape.devices`` devices at once
    (each runs the same work, as each runs its own clients in a round: on a CPU they compete for
    the same cores and memory bandwidth, which changes the ranking).

    A step's cost is the *marginal* cost inside a loop, as in local SGD: one compiled loop
    whose trip count is an argument is timed for 1 and ``1 + steps`` iterations (best of
    ``repeats`` each) and the difference divided by ``steps``, so per-call costs (dispatch,
    constants such as ``rows``' shift tensor) do not count; with 2 steps per call they had
    ranked ``rows`` 3.7x too slow on LeNet-5's second layer. The rule of thumb's choice is timed
    first; a candidate whose first long call is over twice the best so far is not timed again.
    """
    clients = min(shape.clients, MAX_MEASURED_CLIENTS)
    dtype = jnp.dtype(shape.dtype)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((clients, shape.batch, shape.height, shape.width, shape.cin))
    k = rng.standard_normal((clients, shape.kh, shape.kw, shape.cin, shape.cout)) * 0.1
    x, k = jnp.asarray(x, dtype), jnp.asarray(k, dtype)
    if shape.clients == 1:
        x, k = x[0], k[0]
    mesh = None
    if shape.devices > 1:
        mesh = jax.sharding.Mesh(jax.devices()[: shape.devices], ("devices",))
        x, k = jax.device_put((x, k), jax.sharding.NamedSharding(mesh, jax.P()))
    first = rule_of_thumb(shape)
    seconds: dict[str, float] = {}
    short, long = jnp.int32(1), jnp.int32(1 + steps)
    for lowering in (first, *(c for c in CANDIDATES if c != first)):
        run = _compiled_loop(conv, shape, lowering, mesh, x, k)
        best_so_far = min(seconds.values(), default=float("inf"))
        times = {1: float("inf"), 1 + steps: float("inf")}
        jax.block_until_ready(run(x, k, short))  # warm up
        for _ in range(repeats):
            for n, trips in ((1 + steps, long), (1, short)):
                start = time.perf_counter()
                jax.block_until_ready(run(x, k, trips))
                times[n] = min(times[n], time.perf_counter() - start)
            if times[1 + steps] / (1 + steps) > 2 * best_so_far:
                break
        seconds[lowering] = max(times[1 + steps] - times[1], 1e-9) / steps
    return {c: seconds[c] for c in CANDIDATES}


def _compiled_loop(conv, shape: ConvShape, lowering: str, mesh, x, k):
    """The compiled loop that :func:`measure` times (its trip count an argument), on every
    device of ``mesh`` at once (replicated inputs: each device does the whole work)."""

    def layer(x, k):
        return conv(x, k, shape.stride, shape.padding, lowering)

    if shape.clients > 1:
        layer = jax.vmap(layer)

    def step(_, carry):
        x, k = carry
        if not shape.training:
            return x + 1e-6 * jnp.mean(layer(x, k)), k
        y, pullback = jax.vjp(layer, x, k)
        dx, dk = pullback(y)
        return x - 1e-6 * dx, k - 1e-6 * dk

    def run(x, k, trips):
        return jax.lax.fori_loop(0, trips, step, (x, k))

    if mesh is not None:
        run = jax.shard_map(run, mesh=mesh, in_specs=jax.P(), out_specs=jax.P(), check_vma=False)
    return jax.jit(run).lower(x, k, jnp.int32(1)).compile()


# -- whole models ----------------------------------------------------------------------------
#
