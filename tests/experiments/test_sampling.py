"""The nucleus (top-p) filter, numpy form (and the torch sampler when torch is present)."""
import sys
from pathlib import Path

# experiments/sigma_exp is a plain source package (not installed): import it from the tree.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
import numpy as np
import pytest

from sigma_exp.sampling import top_p_mask, top_p_probs


def test_keeps_smallest_prefix_reaching_p():
    p = np.array([0.6, 0.25, 0.1, 0.05])
    # mass before each token: 0, .6, .85, .95
    assert top_p_mask(p, 0.9).tolist() == [True, True, True, False]
    assert top_p_mask(p, 0.8).tolist() == [True, True, False, False]
    assert top_p_mask(p, 0.5).tolist() == [True, False, False, False]
    assert top_p_mask(p, 1.0).tolist() == [True, True, True, True]


def test_unsorted_input_and_renormalisation():
    p = np.array([0.1, 0.6, 0.05, 0.25])
    assert top_p_mask(p, 0.8).tolist() == [False, True, False, True]
    q = top_p_probs(p, 0.8)
    assert q == pytest.approx([0.0, 0.6 / 0.85, 0.0, 0.25 / 0.85])


def test_top_token_always_kept_and_batched():
    p = np.array([[0.9, 0.1], [0.3, 0.7]])
    assert top_p_mask(p, 1e-9).tolist() == [[True, False], [False, True]]


def test_ties_go_to_smaller_index():
    p = np.array([0.25, 0.25, 0.25, 0.25])
    assert top_p_mask(p, 0.5).tolist() == [True, True, False, False]


def test_torch_filter_matches_numpy():
    torch = pytest.importorskip("torch", reason="torch is only in .venv-exp (experiments/setup.sh)")
    from sigma_exp.lm import top_p_filter
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(16, 50)) * 3
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    for p in (0.5, 0.9, 0.95):
        got = torch.isfinite(top_p_filter(torch.tensor(logits), p)).numpy()
        assert (got == top_p_mask(probs, p)).all()
