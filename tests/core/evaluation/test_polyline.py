"""core.evaluation.polyline: the points a drawn curve keeps."""
import numpy as np
import pytest

from core.evaluation.polyline import deviation, simplify


def test_a_straight_line_keeps_its_ends_and_a_corner_is_kept():
    x = np.linspace(0, 1, 101)
    assert simplify(x, 2 * x).tolist() == [0, 100]
    y = np.minimum(x, 0.5)  # a corner at x = 0.5
    assert simplify(x, y).tolist() == [0, 50, 100]


def test_every_point_left_out_is_within_the_tolerance_of_the_drawn_line():
    rng = np.random.default_rng(0)
    x = np.sort(rng.random(2000))
    y = np.cumsum(rng.normal(size=2000))
    for tol in (0.001, 0.01, 0.05):
        kept = simplify(x, y, tol)
        assert kept[0] == 0 and kept[-1] == len(x) - 1 and np.all(np.diff(kept) > 0)
        assert deviation(x, y, kept) <= tol
        assert len(kept) < len(x)
    assert len(simplify(x, y, 0.05)) < len(simplify(x, y, 0.001))


def test_the_ranges_scale_the_tolerance():
    x = np.linspace(0, 1, 11)
    y = np.r_[np.zeros(5), 0.01, np.zeros(5)]  # a bump of 0.01
    assert 5 in simplify(x, y, 0.005, y_range=(0, 1))  # 1 % of the plot: kept
    assert 5 not in simplify(x, y, 0.02, y_range=(0, 1))  # within 2 %: left out
    assert 5 in simplify(x, y, 0.02)  # the data's own range (0.01): the bump is the whole plot


def test_short_and_bad_input():
    assert simplify([0.0, 1.0], [0.0, 1.0]).tolist() == [0, 1]
    assert simplify([], []).tolist() == []
    with pytest.raises(ValueError):
        simplify([0, 1, 2], [0, np.nan, 1])
    with pytest.raises(ValueError):
        simplify([0, 1, 2], [0, 1])
