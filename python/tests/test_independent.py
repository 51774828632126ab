"""prh.compare against values computed without prh (numpy, scipy, scikit-learn:
fixtures/independent/make.py), for every case whose options the Python API takes (k, the
default kernel and parameters), on single layers and through the official multi-layer
preparation."""

import json
from pathlib import Path

import numpy as np
import pytest

import prh

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
EXPECTED = json.loads((FIXTURES / "independent" / "expected.json").read_text())
KNN = {"mutual_knn", "cycle_knn", "lcs_knn", "edit_distance_knn", "jaccard_knn"}
# Options other than k are not parameters of prh.compare (yet): those cases run in tests/independent.rs.
API = lambda c: set(c["options"]) <= {"k"}


def tolerance(metric):
    """As tests/independent.rs: counts exact, float32 rounding (measured ≤ 1.8e-7) otherwise."""
    return 1e-9 if metric in KNN else 1e-5 if metric == "svcca" else 1e-6


def load(name):
    return np.load(FIXTURES / "reference" / name)


def ident(case):
    return f"{case['a']}:{case['metric']}:{json.dumps(case['options'])}"


@pytest.mark.parametrize("case", [c for c in EXPECTED["pairs"] if API(c)], ids=ident)
def test_single_layer_values(case):
    got = prh.compare(load(case["a"]), load(case["b"]), metric=case["metric"], prep=False,
                      **case["options"])
    assert abs(got - case["value"]) <= tolerance(case["metric"]), (got, case["value"])


@pytest.mark.parametrize("case", [c for c in EXPECTED["pipeline"] if API(c)], ids=ident)
def test_multi_layer_best_values(case):
    # One n × L × d array: the official clamp over all layers, then rows normalised.
    got = prh.compare(load(case["a"]), load(case["b"]), metric=case["metric"], **case["options"])
    assert abs(got - case["best"]) <= tolerance(case["metric"]), (got, case["best"])


def test_every_case_is_checked_somewhere():
    ran = [c for c in EXPECTED["pairs"] + EXPECTED["pipeline"] if API(c)]
    assert len(ran) >= 25, len(ran)
