"""The torch parts (only where torch is installed, i.e. in .venv-exp)."""
import sys
from pathlib import Path

# experiments/sigma_exp is a plain source package (not installed): import it from the tree.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is only in .venv-exp (experiments/setup.sh)")


def test_tiny_lm_train_generate_embed(tmp_path):
    from sigma_exp import lm
    torch.manual_seed(0)
    docs = ["tool for x", "library for y", "tool for y", "documentation for x"] * 8
    v = lm.Vocab.build(docs, 10)
    seqs = [v.encode(d, 8) for d in docs]
    assert seqs[0][0] == lm.BOS and seqs[0][-1] == lm.EOS
    m = lm.GPT(lm.LMConfig(vocab=len(v), d_model=16, n_heads=2, n_layers=1, ctx=10))
    res = lm.train(m, seqs, epochs=5, lr=3e-3, batch=8, warmup=2, log=lambda *a: None)
    assert np.isfinite(res["loss"])
    a = lm.generate(m, 7, max_new=6, seed=1, batch=3)
    assert a == lm.generate(m, 7, max_new=6, seed=1, batch=3)   # seeded: reproducible
    assert len(a) == 7 and all(len(x) <= 6 and lm.UNK not in x for x in a)
    e = lm.embed(m, [[lm.BOS] + x + [lm.EOS] for x in a])
    assert e.shape == (7, 16) and np.isfinite(e).all()
    lm.save(m, tmp_path / "m.pt")
    m2 = lm.load(tmp_path / "m.pt")
    assert np.allclose(lm.embed(m2, seqs[:3]), lm.embed(m, seqs[:3]), atol=1e-6)


def test_kv_cache_matches_full_forward():
    from sigma_exp import lm
    torch.manual_seed(0)
    m = lm.GPT(lm.LMConfig(vocab=12, d_model=16, n_heads=2, n_layers=2, ctx=10)).eval()
    x = torch.tensor([[1, 5, 7, 4, 9]])
    full = m.hidden(x)
    caches = [dict() for _ in m.blocks]
    steps = [m.hidden(x[:, t:t + 1], caches, start=t) for t in range(x.shape[1])]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)
