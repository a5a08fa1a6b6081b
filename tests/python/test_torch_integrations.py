"""sigma_client.torch (layer capture), the Hugging Face and Lightning callbacks and the
TensorBoard writer with the real libraries (a tiny randomly initialised GPT-2: nothing is
downloaded) against the real sigmad; a 2-process torch.distributed (gloo) run is in
test_torch_distributed.py."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is a test extra (scripts/deps.sh --test-extras)")

from sigma_client import Monitor  # noqa: E402
from sigma_client.torch import LayerProbe, capture, pool  # noqa: E402

from test_client import assert_same_report  # noqa: E402


def tiny_gpt2(seed=0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def probe_set(n=40, t=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (n, t), generator=g)
    mask = torch.ones(n, t, dtype=torch.long)
    mask[::3, t // 2:] = 0                      # some right-padded rows
    return {"input_ids": ids, "attention_mask": mask}


def test_pooling_follows_the_attention_mask():
    h = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])
    assert torch.equal(pool(h, mask, "mean")[0], h[0, :2].mean(0))
    assert torch.equal(pool(h, mask, "mean")[1], h[1, 1:].mean(0))
    assert torch.equal(pool(h, mask, "last"), torch.stack([h[0, 1], h[1, 3]]))
    assert torch.equal(pool(h, mask, "cls"), torch.stack([h[0, 0], h[1, 1]]))
    assert torch.equal(pool(h, None, "last"), h[:, -1])
    with pytest.raises(ValueError, match="pooling"):
        pool(h, None, "max")


def test_capture_hooks_equal_output_hidden_states():
    model = tiny_gpt2()
    probe = probe_set()
    got, ids = capture(model, ["transformer.h.0", "transformer.h.1"], probe, batch_size=16,
                       rank=0, world_size=1)
    assert model.training, "capture restores the train mode"
    model.eval()
    with torch.no_grad():
        hs = model(**probe, output_hidden_states=True).hidden_states
    for i, name in enumerate(["transformer.h.0", "transformer.h.1"]):
        # hidden_states[i + 1] is block i's output (the last one after ln_f: not compared)
        want = pool(hs[i + 1], probe["attention_mask"], "mean") if i == 0 else None
        assert got[name].shape == (40, 32)
        if want is not None:
            torch.testing.assert_close(got[name], want, rtol=1e-5, atol=1e-6)
    assert ids.tolist() == list(range(40))
    with pytest.raises(ValueError, match="no submodule"):
        capture(model, ["nope"], probe)


def test_layer_probe_sends_one_tap_per_layer_bf16_too(server, job):
    model = tiny_gpt2().to(torch.bfloat16)
    probe = probe_set()
    lp = LayerProbe(server.target, job, ["transformer.h.0", "transformer.h.1"], probe,
                    pooling="last", rank=0, world_size=1, n_a=64)
    lp.run(model, 0)
    reps = lp.wait(60)
    assert set(reps) == {"transformer.h.0", "transformer.h.1"}
    for name, r in reps.items():
        assert r.tap == name and r.n == 40 and r.m == 32
    # The same rows sent by hand, as bf16, give the same report.
    got, ids = capture(model, ["transformer.h.1"], probe, pooling="last", rank=0, world_size=1)
    assert got["transformer.h.1"].dtype == torch.bfloat16
    ref = Monitor(server.target, job=job + "-ref", rank=0, world_size=1, n_a=64)
    with ref.generation(0) as g:
        g.send(got["transformer.h.1"], sample_ids=ids)
    assert_same_report(g.wait(30), reps["transformer.h.1"], rel=1e-12)
    lp.close()


def test_huggingface_callback_on_evaluate_and_every_n_steps(server, job, tmp_path):
    transformers = pytest.importorskip("transformers")
    from sigma_client.integrations.huggingface import SigmaCallback

    model = tiny_gpt2()
    data = probe_set(n=32, seed=3)
    train = [{"input_ids": data["input_ids"][i], "attention_mask": data["attention_mask"][i],
              "labels": data["input_ids"][i]} for i in range(32)]
    cb = SigmaCallback(server.target, job, ["transformer.h.1"], probe_set(), every_n_steps=4,
                       on_evaluate=True, generation="step", rank=0, world_size=1, wait=True)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=8, eval_strategy="steps",
        eval_steps=8, report_to=[], save_strategy="no", use_cpu=True, seed=0, logging_strategy="no",
        disable_tqdm=True)
    transformers.Trainer(model=model, args=args, train_dataset=train, eval_dataset=train[:8],
                         callbacks=[cb]).train()
    # steps 4 and 8 (every_n_steps), then the evaluate at step 8 (already sealed: same report)
    assert cb.generations == [4, 8, 8]
    with Monitor(server.target, job=job, tap="transformer.h.1", rank=0, world_size=1) as mon:
        hist = mon.history()
    assert [r.generation for r in hist] == [4, 8]
    assert all(r.n == 40 and r.m == 32 for r in hist)
    # The model changed between steps 4 and 8: the layer's geometry moved.
    assert hist[1].track2 != hist[0].track2
    cb.close()


def test_lightning_callback_each_validation_epoch(server, job):
    L = pytest.importorskip("lightning")

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.enc = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(),
                                           torch.nn.Linear(16, 12))

        def forward(self, x):
            return self.enc(x)

        def training_step(self, batch, _):
            (x,) = batch
            return ((self(x) - x) ** 2).mean()

        def validation_step(self, batch, _):
            (x,) = batch
            self.log("val", ((self(x) - x) ** 2).mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.5)

    g = torch.Generator().manual_seed(4)
    x = torch.randn(64, 12, generator=g)
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=16)
    from sigma_client.integrations.lightning import SigmaCallback

    cb = SigmaCallback(server.target, job, ["enc.1"], x, rank=0, world_size=1, wait=True)
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=1, callbacks=[cb])
    trainer.fit(Tiny(), dl, dl)
    assert cb.generations == [0, 1, 2]          # one per validation epoch, not the sanity check
    with Monitor(server.target, job=job, tap="enc.1", rank=0, world_size=1) as mon:
        hist = mon.history()
    assert [r.generation for r in hist] == [0, 1, 2] and all(r.n == 64 and r.m == 16 for r in hist)
    cb.close()


def test_tensorboard_scalars_by_generation(server, job, tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from sigma_client.integrations.tensorboard import log_reports

    rng = np.random.default_rng(0)
    with Monitor(server.target, job=job, rank=0, world_size=1) as mon:
        for k in range(3):
            with mon.generation(k, corpus_size=3000) as gen:   # n > n_A: a half-width > 0
                gen.send(rng.standard_normal((300, 8)).astype(np.float32) *
                         np.exp(-np.arange(8) * k / 4).astype(np.float32))
        hist = mon.history()
    w = SummaryWriter(str(tmp_path))
    assert log_reports(w, hist) > 0
    w.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    tag = f"sigma/{job}/default/drift_per_dim/track2"
    ev = acc.Scalars(tag)
    assert [e.step for e in ev] == [0, 1, 2]
    for e, r in zip(ev, hist):
        assert e.value == pytest.approx(r.per_dim.track2_drift, rel=1e-6, abs=1e-7)
    z = acc.Scalars(f"sigma/{job}/default/drift_per_dim/z_score")
    assert z[2].value == pytest.approx(hist[2].per_dim.track2_drift / hist[2].per_dim.drift_halfwidth,
                                       rel=1e-5)
    alert_tags = [t for t in acc.Tags()["scalars"] if "/alert/" in t]
    assert alert_tags, "the contraction fires alerts, written as 0..3 per generation"


def test_wandb_logging_when_installed(server, job, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb", reason="wandb is optional (never required)")
    from sigma_client.integrations.tensorboard import log_reports_wandb

    rng = np.random.default_rng(1)
    with Monitor(server.target, job=job, rank=0, world_size=1) as mon:
        for k in range(2):
            with mon.generation(k) as gen:
                gen.send(rng.standard_normal((100, 4)).astype(np.float32))
        hist = mon.history()
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = wandb.init(dir=str(tmp_path), project="sigma-test")
    try:
        assert log_reports_wandb(hist, run=run) == 2
    finally:
        run.finish()
