"""Offline spool: shares that could not reach sigmad, kept on disk until they can.

One file per share (job, tap, generation, rank), already pre-sketched (at most n_A
rows), written atomically (temporary file, then rename):

    b"SIGMASPOOL1\\n"
    u32 little-endian length + JSON header {target, job, tap, generation, rank, world_size}
    (u32 little-endian length + serialized IngestRequest) for OpenSnapshot, Batch..., EndOfShare

A share is deleted only after sigmad answered its Ingest stream with OK, so a crash in
between re-sends it; the daemon counts a (rank, seq) once and answers a share of a sealed
generation with the stored report, so every share is counted exactly once.
Thread-safety: one Spool per Monitor (its worker thread); several processes may share a
directory (distinct ranks write distinct names; `sync` deletes what it sent).
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence
from urllib.parse import quote

MAGIC = b"SIGMASPOOL1\n"
SUFFIX = ".sigmashare"
DEFAULT_MAX_BYTES = 1 << 30
_LEN = struct.Struct("<I")


def default_spool_dir() -> Path:
    """$SIGMA_SPOOL_DIR, else $XDG_CACHE_HOME/sigma_client/spool (~/.cache/...)."""
    env = os.environ.get("SIGMA_SPOOL_DIR")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "sigma_client" / "spool"


@dataclass(frozen=True)
class SpooledShare:
    path: Path
    target: str
    job: str
    tap: str
    generation: int
    rank: int
    world_size: int


def share_name(job: str, tap: str, generation: int, rank: int) -> str:
    # Generation zero-padded: a directory listing sorts in generation order.
    return f"{quote(job, safe='')}~{quote(tap, safe='')}~g{generation:012d}~r{rank}{SUFFIX}"


class Spool:
    """A directory of spooled shares, bounded to max_bytes in total."""

    def __init__(self, directory: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES):
        self.dir = Path(directory)
        self.max_bytes = int(max_bytes)

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.dir.glob("*" + SUFFIX) if p.is_file())

    def write(self, target: str, job: str, tap: str, generation: int, rank: int,
              world_size: int, messages: Sequence) -> Path:
        """Stores one share (a list of IngestRequest). OSError when the spool would
        exceed max_bytes or the directory cannot be written."""
        header = json.dumps({"target": target, "job": job, "tap": tap, "generation": generation,
                             "rank": rank, "world_size": world_size}).encode()
        parts = [MAGIC, _LEN.pack(len(header)), header]
        for msg in messages:
            raw = msg.SerializeToString()
            parts += [_LEN.pack(len(raw)), raw]
        blob = b"".join(parts)
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / share_name(job, tap, generation, rank)
        old = path.stat().st_size if path.exists() else 0
        if self.size() - old + len(blob) > self.max_bytes:
            raise OSError(f"spool {self.dir} full: {len(blob)} more bytes would exceed "
                          f"spool_max_bytes = {self.max_bytes}")
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return path

    def pending(self, job: Optional[str] = None, tap: Optional[str] = None,
                rank: Optional[int] = None) -> list[SpooledShare]:
        """Spooled shares (optionally of one job/tap/rank) in (job, tap, generation, rank) order."""
        out = []
        if not self.dir.is_dir():
            return out
        for p in sorted(self.dir.glob("*" + SUFFIX)):
            try:
                s = read_header(p)
            except (OSError, ValueError):
                continue  # being written by another process, or not ours: sync reports it
            if (job is None or s.job == job) and (tap is None or s.tap == tap) and \
                    (rank is None or s.rank == rank):
                out.append(s)
        out.sort(key=lambda s: (s.job, s.tap, s.generation, s.rank))
        return out


def read_header(path: Path) -> SpooledShare:
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise ValueError(f"{path}: not a SIGMA spool file")
        (n,) = _LEN.unpack(f.read(_LEN.size))
        h = json.loads(f.read(n))
    return SpooledShare(path=path, target=h["target"], job=h["job"], tap=h["tap"],
                        generation=int(h["generation"]), rank=int(h["rank"]),
                        world_size=int(h["world_size"]))


def read_messages(path: Path, pb2) -> list:
    """The share's IngestRequest messages, in order. ValueError on a truncated file."""
    data = Path(path).read_bytes()
    if not data.startswith(MAGIC):
        raise ValueError(f"{path}: not a SIGMA spool file")
    pos = len(MAGIC)
    (n,) = _LEN.unpack_from(data, pos)
    pos += _LEN.size + n
    msgs = []
    while pos < len(data):
        if pos + _LEN.size > len(data):
            raise ValueError(f"{path}: truncated")
        (n,) = _LEN.unpack_from(data, pos)
        pos += _LEN.size
        if pos + n > len(data):
            raise ValueError(f"{path}: truncated")
        msg = pb2.IngestRequest()
        msg.ParseFromString(data[pos:pos + n])
        msgs.append(msg)
        pos += n
    return msgs

