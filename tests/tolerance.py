"""How closely two *different* programs computing the same float32 math must agree.

A vmapped sweep against separate runs, or a round sharded over devices against one device,
computes the same sums in another order (other matmul blocking, a psum of device blocks, a
batch dimension). Each reordered float32 reduction over n terms moves its result by up to about
n * 2^-24 of the terms' magnitude, typically sqrt(n) * 2^-24: for the few hundred to few
thousand terms of a round's reductions, 1e-6 to 1e-5 of the values' scale, and a round of SGD
steps can amplify that. Which order a CPU's kernels take depends on its vector width (AVX2 vs
AVX-512), so a bound tuned on one CPU can fail on another: FedAvg's logistic regression, three
rounds of a sweep against separate runs, agreed to 1e-5 on CI's AMD EPYC and differed by 1.04e-4
on an AVX-512 Intel Xeon. The bound here is 1e-4 of the values' scale per round compared (errors
compound over rounds), floored at scale 1 (parameters and losses of order 1 or smaller): wide
enough for any CPU family's order, far below what a real bug does (a wrong key, hyperparameter
or data row moves values by their own scale). Identical programs are compared bit for bit,
never with this.
"""

from __future__ import annotations

import jax
import numpy as np

REL_PER_ROUND = 1e-4

# Named bounds for one computation checked against the same math written out (an equation by
# hand, numpy, a per-client loop of the same function). Every literal tolerance elsewhere in the
# tests carries a "# tol:" comment instead (tests/test_tolerances.py checks both).
ULPS = 1e-6
"""Relative: a few float32 operations (a softmax, a KL of a few classes, a mean of a handful of
terms) against the same arithmetic by hand. Each float32 operation rounds by at most 2^-24
(6e-8) of its result, so a handful stays below 1e-6; no summation order of any CPU reaches it."""

SUMS = 1e-5
"""Relative: the same math as a reference whose reductions (up to a few hundred terms: a batch's
mean loss, a small matmul, a weighted mean over clients) run in another order or precision
(float32 against numpy's float64, vmapped against looped): n * 2^-24 is at most 1e-5 of the
values' scale for n <= 168, and reordered sums err by about sqrt(n) * 2^-24, far less."""

NEAR_ZERO = 1e-6
"""Absolute floor beside ``ULPS`` / ``SUMS`` for values that may be near 0 (a weight that barely
moved, a fraction of 0), whose relative error is unbounded: 2^-20 of the order-1 values these
tests hold, so a real difference (a wrong row, key or step moves a value by its own scale) is
still far outside."""


def scale_of(reference) -> float:
    """The largest magnitude in a pytree (at least 1)."""
    leaves = [np.max(np.abs(np.asarray(x, np.float64))) for x in jax.tree.leaves(reference)]
    return max([1.0, *(float(v) for v in leaves if np.size(v))])


def between_programs(reference, rounds: int = 1) -> float:
    """The largest |a - b| allowed between two programs after ``rounds`` rounds, for values
    shaped like ``reference``."""
    return REL_PER_ROUND * rounds * scale_of(reference)


def assert_trees_close(got, expected, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Every leaf of ``got`` within ``atol + rtol * |expected|`` of ``expected``'s.

    The default bounds one or two rounds of two programs computing the same float32 math: a
    vmapped round against its per-client loop reference, or a round against the paper's
    equation written out with numpy/JAX. 1e-4 relative is this module's per-round bound
    between programs; the 1e-5 floor keeps values near 0 (a weight that barely moved, a
    fraction of 0) from needing an exact match. Measured differences on these comparisons:
    at most about 1e-6 on CI's AVX2 and this machine's AVX-512 order, and they passed under
    ``XLA_FLAGS=--xla_cpu_max_isa=SSE4_2`` (another summation order) too. A bug (a wrong key,
    weight, row or step) moves a value by its own scale, far outside. Pass ``0, 0`` where the
    two sides are the same program or a value that must not change at all (bit for bit).
    """
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)
