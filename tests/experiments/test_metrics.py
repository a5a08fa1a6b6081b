"""Surface metrics on fixed strings, against values computed by hand."""
import sys
from pathlib import Path

# experiments/sigma_exp is a plain source package (not installed): import it from the tree.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
import pytest

from sigma_exp.metrics import distinct_n, first_move, rep_rate, self_rep, surface_metrics

TEXTS = ["a b a", "b c", "a b a"]
# tokens: [a b a] [b c] [a b a]: 8 tokens, unigrams {a, b, c};
# bigrams (a,b) (b,a) | (b,c) | (a,b) (b,a): 5 bigrams, 3 distinct.


def test_surface_metrics_by_hand():
    s = surface_metrics(TEXTS, reference=["b c", "x"])
    assert s["n_texts"] == 3
    assert s["distinct_1"] == pytest.approx(3 / 8)
    assert s["distinct_2"] == pytest.approx(3 / 5)
    assert s["rep_rate"] == pytest.approx(1 / 3)      # the third text repeats the first
    assert s["self_rep"] == pytest.approx(2 / 8)      # the second 'a' of texts 1 and 3
    assert s["mean_len"] == pytest.approx(8 / 3)
    assert s["copy_rate"] == pytest.approx(1 / 3)     # "b c" is in the reference


def test_ngrams_do_not_cross_texts():
    assert distinct_n([["a"], ["a"]], 2) == 0.0       # no bigram at all
    assert distinct_n([["a", "b"], ["b", "a"]], 2) == 1.0


def test_empty_inputs():
    s = surface_metrics([])
    assert s["distinct_1"] == 0.0 and s["rep_rate"] == 0.0 and s["mean_len"] == 0.0
    assert self_rep([[]]) == 0.0
    assert rep_rate(["", ""]) == pytest.approx(0.5)


def test_punctuation_is_a_token():
    s = surface_metrics(["GNU C library (docs)"])
    assert s["mean_len"] == 6                         # GNU C library ( docs )


def test_first_move():
    assert first_move([1.0, 1.05, 0.89, 0.5]) == 2    # |0.89 - 1| >= 0.10
    assert first_move([1.0, 1.0, 1.0]) is None
    assert first_move([2.0, 2.3], rel=0.2) is None
    assert first_move([]) is None
