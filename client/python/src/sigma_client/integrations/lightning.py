"""A Lightning Callback that sends named layers' embeddings of a fixed probe set.

    from sigma_client.integrations.lightning import SigmaCallback
    cb = SigmaCallback("127.0.0.1:50051", job="run-7", layers=["encoder.2"], probe=probe_tensor)
    lightning.Trainer(callbacks=[cb], ...).fit(module)

Captures at the end of each validation epoch (on_evaluate=True, skipped during the
sanity check), every N training batches (every_n_steps=N, by trainer.global_step) and at
the end of each training epoch when on_train_epoch_end=True; cb.end_generation(module, k)
captures generation k explicitly. Generation numbers as in the Hugging Face callback.
Works with `lightning` or `pytorch_lightning`.
"""
from __future__ import annotations

from typing import Any

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the older package name
    from pytorch_lightning.callbacks import Callback

from ._common import CaptureSchedule


class SigmaCallback(Callback):
    def __init__(self, target, job: str, layers, probe: Any, *, on_train_epoch_end: bool = False,
                 **kw):
        super().__init__()
        self.schedule = CaptureSchedule(target, job, layers, probe, **kw)
        self.each_epoch = on_train_epoch_end

    @property
    def generations(self) -> list[int]:
        return self.schedule.generations

    def end_generation(self, module, generation: int) -> dict:
        return self.schedule.capture(module, step=0, k=generation)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.schedule.step_due(trainer.global_step):
            self.schedule.capture(pl_module, trainer.global_step)

    def on_validation_epoch_end(self, trainer, pl_module):
        if self.schedule.on_evaluate_ and not trainer.sanity_checking:
            self.schedule.capture(pl_module, trainer.global_step)

    def on_train_epoch_end(self, trainer, pl_module):
        if self.each_epoch:
            self.schedule.capture(pl_module, trainer.global_step)

    def close(self) -> None:
        self.schedule.close()
