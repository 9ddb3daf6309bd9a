"""Every float tolerance in the tests says what it bounds and why (issue 30, item 5).

A tolerance is either one of ``tests/tolerance.py``'s named bounds (each documented there:
what it bounds, in units of the values' scale, and why no CPU family's summation order breaks
it) or a literal with a ``# tol:`` comment saying the same, on the statement's lines or in the
comment block right above it. Checked over the source of every test file: keyword tolerances
(``atol=``, ``rtol=``, pytest.approx's ``rel=`` / ``abs=``) and asserted comparisons against a
small constant (``max_diff(a, b) < 1e-6``). ``0`` (bit for bit) needs no statement: it is the
comparison of identical programs.
"""

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
KEYWORDS = {"atol", "rtol", "rel", "abs"}
MARK = "# tol:"


def _number(node: ast.AST) -> float | None:
    """The value of a numeric literal (``1e-6``, ``-1e-6``), else None."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _number(node.operand)
        return None if inner is None else -inner
    number = isinstance(node, ast.Constant) and isinstance(node.value, int | float)
    if number and not isinstance(node.value, bool):
        return float(node.value)
    return None


def unexplained(source: str) -> list[tuple[int, str]]:
    """(line, what) for each literal tolerance in ``source`` without a ``# tol:`` statement."""
    lines = source.splitlines()

    def stated(node: ast.AST) -> bool:
        first = node.lineno - 1  # the comment block right above the statement's first line
        while first > 0 and lines[first - 1].lstrip().startswith("#"):
            first -= 1
        return any(MARK in line for line in lines[first : node.end_lineno])

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                value = _number(kw.value)
                if kw.arg in KEYWORDS and value not in (None, 0.0) and not stated(node):
                    found.append((node.lineno, f"{kw.arg}={value:g}"))
        elif isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare):
            for op, right in zip(node.test.ops, node.test.comparators, strict=True):
                value = _number(right)
                small = value is not None and 0 < value < 1e-2
                if isinstance(op, ast.Lt | ast.LtE) and small and not stated(node):
                    found.append((node.lineno, f"< {value:g}"))
    return sorted(found)


def test_the_checker_finds_a_bare_tolerance_and_accepts_a_stated_or_named_one():
    bare = "np.testing.assert_allclose(a, b, rtol=1e-5)\nassert diff(a, b) < 1e-6\n"
    assert unexplained(bare) == [(1, "rtol=1e-05"), (2, "< 1e-06")]
    stated = (
        "# tol: float32 sums of 10 terms\n# reordered\n"
        "np.testing.assert_allclose(a, b, rtol=1e-5)\n"
        "assert diff(a, b) < 1e-6  # tol: one float32 rounding\n"
        "np.testing.assert_allclose(a, b, rtol=tolerance.SUMS, atol=0)\n"
        "assert x == pytest.approx(y, rel=-1e-3)\n"
    )
    assert unexplained(stated) == [(6, "rel=-0.001")]


def test_every_tolerance_in_the_tests_is_named_or_stated():
    missing = [
        f"{path.name}:{line}: {what}"
        for path in sorted(TESTS.glob("*.py"))
        for line, what in unexplained(path.read_text())
    ]
    assert not missing, (
        "tolerances without a statement of what they bound (use a bound from "
        "tests/tolerance.py or add a '# tol:' comment):\n" + "\n".join(missing)
    )
