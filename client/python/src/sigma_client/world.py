"""Where a process's rank and world size come from (issue 15 item 3): torch.distributed,
the env, or nothing (then the Monitor says so)."""
from __future__ import annotations

import os
import sys


def detect_world() -> tuple[int, int, str]:
    """(rank, world_size, source): from torch.distributed when initialised ("torch"),
    else env RANK / WORLD_SIZE ("env"), else (0, 1, "default"): the caller cannot tell."""
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            dist = torch.distributed
            if dist.is_available() and dist.is_initialized():
                return int(dist.get_rank()), int(dist.get_world_size()), "torch"
        except Exception:
            pass
    if "RANK" in os.environ or "WORLD_SIZE" in os.environ:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), "env"
    return 0, 1, "default"


def detect_rank() -> tuple[int, int]:
    """(rank, world_size) from torch.distributed when initialised, else env RANK /
    WORLD_SIZE, else (0, 1)."""
    rank, world, _ = detect_world()
    return rank, world


class WorldSizeWarning(UserWarning):
    """The Monitor could not tell the world size and sends as rank 0 of 1."""


UNKNOWN_WORLD = ("sigma_client: cannot tell the world size (torch.distributed is not initialised "
                 "and RANK/WORLD_SIZE are not set): job {job!r} sends as rank 0 of 1. In a "
                 "multi-process job create the Monitor after torch.distributed.init_process_group "
                 "(or set RANK and WORLD_SIZE, or pass rank= and world_size=): a second process "
                 "sending as rank 0 is refused by sigmad (ALREADY_EXISTS), its rows are not merged.")
