"""What the Hugging Face and Lightning callbacks share: when to capture and which
generation number a capture gets."""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from ..torch import LayerProbe


class CaptureSchedule:
    """generation: "count" (0, 1, 2, ... per capture), "step" (the trainer's global step),
    or a callable step -> generation; end_generation(model, k) captures generation k
    explicitly (the end of a generation of a recursive loop)."""

    def __init__(self, target: str | Sequence[str], job: str, layers: Sequence[str], probe: Any, *,
                 every_n_steps: Optional[int] = None, on_evaluate: bool = True,
                 generation: str | Callable[[int], int] = "count", wait: bool = False,
                 **probe_kw):
        if generation not in ("count", "step") and not callable(generation):
            raise ValueError("generation must be 'count', 'step' or a callable step -> generation")
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError("every_n_steps must be >= 1")
        self.probe = LayerProbe(target, job, layers, probe, **probe_kw)
        self.every_n_steps, self.on_evaluate_ = every_n_steps, on_evaluate
        self.generation, self.wait = generation, wait
        self.captures = 0
        self.generations: list[int] = []

    def number(self, step: int) -> int:
        if self.generation == "count":
            return self.captures
        if self.generation == "step":
            return int(step)
        return int(self.generation(step))

    def capture(self, model, step: int, k: Optional[int] = None) -> dict:
        k = self.number(step) if k is None else int(k)
        gens = self.probe.run(model, k)
        self.captures += 1
        self.generations.append(k)
        if self.wait:
            self.probe.wait()
        return gens

    def step_due(self, step: int) -> bool:
        return self.every_n_steps is not None and step > 0 and step % self.every_n_steps == 0

    def close(self) -> None:
        self.probe.close()
