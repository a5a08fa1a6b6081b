"""transformers.TrainerCallback that sends named layers' embeddings of a fixed probe set.

    from sigma_client.integrations.huggingface import SigmaCallback
    cb = SigmaCallback("127.0.0.1:50051", job="gpt2-ft", layers=["transformer.h.1"],
                       probe={"input_ids": ids, "attention_mask": mask}, pooling="mean")
    Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb]).train()

Captures on every evaluate (on_evaluate=True) and every N optimizer steps
(every_n_steps=N); for a recursive loop call cb.end_generation(model, k) after
generation k. Generation numbers: "count" (0, 1,
...), "step" (state.global_step) or a callable step -> generation. Each rank of a
distributed run sends its part of the probe (sigma_client.torch). Every other keyword
(mode="async", on_error, n_a, token, batch_size, forward, taps, ...) goes to LayerProbe
and its Monitors.
"""
from __future__ import annotations

from typing import Any, Optional

from transformers import TrainerCallback

from ._common import CaptureSchedule


class SigmaCallback(TrainerCallback):
    def __init__(self, target, job: str, layers, probe: Any, **kw):
        self.schedule = CaptureSchedule(target, job, layers, probe, **kw)

    @property
    def generations(self) -> list[int]:
        return self.schedule.generations

    def end_generation(self, model, generation: int) -> dict:
        """Captures generation `generation` now (e.g. the end of a recursive loop's round)."""
        return self.schedule.capture(model, step=0, k=generation)

    def on_step_end(self, args, state, control, model=None, **kw):
        if model is not None and self.schedule.step_due(state.global_step):
            self.schedule.capture(model, state.global_step)

    def on_evaluate(self, args, state, control, model=None, **kw):
        if model is not None and self.schedule.on_evaluate_:
            self.schedule.capture(model, state.global_step)

    def close(self, timeout: Optional[float] = None) -> None:
        self.schedule.close()
