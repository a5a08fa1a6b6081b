"""Capture named layers of a torch.nn.Module on a fixed probe set and send one tap per layer.

    from sigma_client.torch import LayerProbe
    probe = LayerProbe("127.0.0.1:50051", job="gpt2-run", layers=["transformer.h.0", "transformer.h.1"],
                       probe=probe_batches, pooling="mean")
    probe.run(model, generation=k)          # one forward pass over the probe, one tap per layer

Forward hooks on the named submodules record each layer's output (the first tensor of a
tuple or ModelOutput) for every probe batch; pooling turns [B, T, H] into [B, H]:
"mean" over the tokens where attention_mask is 1 (all tokens without a mask), "last" the
last token where the mask is 1, "cls" the first such token; [B, H] outputs are taken as
they are. Pooling runs in float32 and the rows go out in the layer's dtype (bf16 stays
bf16), from any device. Sample ids are the rows' global indices in the probe set, so the
same probe rows keep the same ids in every generation (a fixed I_A, SIGMA-SPEC §2).

With torch.distributed initialised, rank r forwards the probe batches i with
i % world_size == r (shard=False: the caller shards, e.g. with a DistributedSampler;
then ids are rank-local index + rank << 40); each rank sends its share and the snapshot
seals when every rank's has arrived. Memory: the pooled rows of the probe, [rows, H]
per layer. Thread-safety: one LayerProbe per thread.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch

from .monitor import Monitor, detect_rank

POOLINGS = ("mean", "last", "cls")


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        for o in out:
            if isinstance(o, torch.Tensor):
                return o
    raise TypeError(f"layer output of type {type(out).__name__} holds no tensor")


def pool(hidden: torch.Tensor, mask: Optional[torch.Tensor], pooling: str) -> torch.Tensor:
    """[B, T, H] (or [B, H]) -> [B, H] in float32; mask: [B, T] of 0/1 or None."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    h = hidden.detach().float()
    if h.dim() == 2:
        return h
    if h.dim() != 3:
        raise ValueError(f"layer output must be [B, T, H] or [B, H], got {tuple(h.shape)}")
    b, t, _ = h.shape
    m = torch.ones(b, t, device=h.device) if mask is None else mask.to(h.device).float()
    if pooling == "mean":
        return (h * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp(min=1.0)
    pos = torch.arange(t, device=h.device).expand(b, t)
    valid = m > 0
    if pooling == "last":
        idx = torch.where(valid, pos, torch.full_like(pos, -1)).amax(1).clamp(min=0)
    else:
        idx = torch.where(valid, pos, torch.full_like(pos, t)).amin(1).clamp(max=t - 1)
    return h[torch.arange(b, device=h.device), idx]


def default_forward(model: torch.nn.Module, batch: Any):
    """dict -> model(**batch); tuple/list -> model(batch[0]); tensor -> model(batch)."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(batch[0])
    return model(batch)


def _to_device(batch: Any, device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _rows(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        return _rows(next(iter(batch.values())))
    return _rows(batch[0])


def _mask(batch: Any) -> Optional[torch.Tensor]:
    return batch.get("attention_mask") if isinstance(batch, Mapping) else None


def _batches(probe: Any, batch_size: int) -> list:
    """The probe as a list of batches: a tensor or dict of tensors is split in batch_size rows."""
    if isinstance(probe, torch.Tensor):
        return list(probe.split(batch_size))
    if isinstance(probe, Mapping):
        n = _rows(probe)
        return [{k: v[i:i + batch_size] for k, v in probe.items()} for i in range(0, n, batch_size)]
    return list(probe)


@torch.no_grad()
def capture(model: torch.nn.Module, layers: Sequence[str], probe: Any, *, pooling: str = "mean",
            batch_size: int = 32, forward: Callable = default_forward, shard: bool = True,
            rank: Optional[int] = None, world_size: Optional[int] = None
            ) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """One pass over this rank's part of the probe: ({layer: [rows, H] pooled, layer dtype,
    on the CPU}, sample ids [rows] uint64). The model's train/eval mode is restored."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    modules = dict(model.named_modules())
    missing = [n for n in layers if n not in modules]
    if missing:
        raise ValueError(f"no submodule named {missing} (model.named_modules() lists them)")
    r, w = detect_rank()
    rank, world = (r if rank is None else rank), (w if world_size is None else world_size)
    got: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    state: dict[str, Any] = {}

    def hook(name):
        def fn(_module, _inputs, output):
            t = _first_tensor(output)
            got[name].append(pool(t, state.get("mask"), pooling).to(t.dtype).cpu())
        return fn

    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    ids, offset = [], 0
    was_training = model.training
    model.eval()
    with contextlib.ExitStack() as stack:
        for n in layers:
            stack.callback(modules[n].register_forward_hook(hook(n)).remove)
        for i, batch in enumerate(_batches(probe, batch_size)):
            rows = _rows(batch)
            if not shard or i % world == rank:
                batch = _to_device(batch, device)
                state["mask"] = _mask(batch)
                forward(model, batch)
                base = offset if shard else offset + (rank << 40)
                ids.append(np.arange(base, base + rows, dtype=np.uint64))
            offset += rows
    model.train(was_training)
    out = {n: (torch.cat(v) if v else torch.empty(0, 0)) for n, v in got.items()}
    return out, (np.concatenate(ids) if ids else np.empty(0, np.uint64))


class LayerProbe:
    """Sends, per call of run(model, generation), one tap per named layer (tap = the layer's
    name, or taps[i]) of job `job` from one pass over the probe. Monitor keyword arguments
    (mode="async", on_error, n_a, seed, token, ...) go to every layer's Monitor."""

    def __init__(self, target: str | Sequence[str], job: str, layers: Sequence[str], probe: Any, *,
                 pooling: str = "mean", taps: Optional[Sequence[str]] = None, batch_size: int = 32,
                 forward: Callable = default_forward, shard: bool = True, **monitor_kw):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        taps = list(taps) if taps is not None else list(layers)
        if len(taps) != len(layers):
            raise ValueError(f"{len(taps)} taps for {len(layers)} layers")
        self.layers, self.probe, self.pooling = list(layers), probe, pooling
        self.batch_size, self.forward, self.shard = batch_size, forward, shard
        self.monitors = {n: Monitor(target, job=job, tap=t, **monitor_kw)
                         for n, t in zip(self.layers, taps)}
        self.last: dict = {}

    def run(self, model: torch.nn.Module, generation: int) -> dict:
        """Captures and sends generation `generation`; returns {layer: Generation} (in async
        mode the shares are queued; gen.wait() blocks for the reports)."""
        mon0 = next(iter(self.monitors.values()))
        pooled, ids = capture(model, self.layers, self.probe, pooling=self.pooling,
                              batch_size=self.batch_size, forward=self.forward, shard=self.shard,
                              rank=mon0.rank, world_size=mon0.world_size)
        out = {}
        for n, mon in self.monitors.items():
            with mon.generation(int(generation)) as gen:
                if pooled[n].numel():
                    gen.send(pooled[n], sample_ids=ids)
            out[n] = gen
        self.last = out
        return out

    def wait(self, timeout: float = 120.0) -> dict:
        """The reports of the last run, {layer: GenerationReport} (blocks until sealed)."""
        return {n: g.wait(timeout) for n, g in self.last.items()}

    def close(self) -> None:
        for mon in self.monitors.values():
            mon.close()


def iter_layers(model: torch.nn.Module, pattern: str) -> Iterable[str]:
    """Names of the submodules matching a glob pattern, e.g. "transformer.h.*" (direct children)."""
    import fnmatch

    return [n for n, _ in model.named_modules() if fnmatch.fnmatch(n, pattern) and
            n.count(".") == pattern.count(".")]
