"""The fixed behaviour set (``tests/behaviour.py``): the same numbers as recorded.

Recorded before the package was reorganised (issue 26) and kept so that any later reorganisation
shows whether it changed a number. CPU runs are bit-for-bit reproducible with one jax/jaxlib, so
the comparison is exact; a record made with another jax version is not comparable (XLA's fusion
and summation order change between versions), and the test says so and re-recording is the fix.
"""

import json

import pytest

from tests import behaviour

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def recorded():
    record = json.loads(behaviour.RECORD.read_text())
    if record["versions"] != behaviour.versions():
        pytest.skip(
            f"recorded with {record['versions']}, running {behaviour.versions()}: "
            "re-record with python tests/behaviour.py on the commit before a change"
        )
    return record["runs"]


@pytest.mark.parametrize("name", behaviour.NAMES)
def test_the_fixed_runs_give_the_recorded_numbers(recorded, name, tmp_path):
    assert name in recorded, f"not recorded yet: python tests/behaviour.py {name}"
    assert behaviour.run_one(name, tmp_path) == recorded[name]
