"""Generation: one rank's share of one generation (send() rows, then finish()).

Sync mode: send() pre-sketches in the caller's thread and finish() sends the share.
Async mode (Monitor(mode="async")): send() validates and copies the block and queues it;
the Monitor's worker thread pre-sketches (_add) and sends (_finish_now); finish() returns
None at once and wait() blocks until the share was handled and the snapshot sealed.
Thread-safety: the caller's thread owns m/kind/_ids_issued; the worker owns the sketch,
the energies and rows_seen (in async mode), finished/response/_report are set last.
"""
from __future__ import annotations

import math
import threading
import time
from typing import TYPE_CHECKING, Any, Iterable, Optional

import grpc
import numpy as np

from .errors import SigmaError, invalid
from .report import GenerationReport, report_from_proto
from .sketch import BottomK, as_ids
from .tensors import row_energies, row_refusal, to_float, to_wire

if TYPE_CHECKING:
    from .monitor import Monitor, SketchParams

class NotSealedError(SigmaError):
    """gen.report asked before the snapshot sealed (other ranks missing, or async mode)."""


class Generation:
    """One rank's share of one generation: send() rows, then finish() (the with-block does)."""

    def __init__(self, mon: "Monitor", k: int, corpus_size: Optional[int]):
        if k < 0:
            raise invalid(f"generation must be >= 0, got {k}")
        self.mon = mon
        self.k = k
        self.corpus_size = corpus_size
        self.m: Optional[int] = None
        self.kind: Optional[str] = None
        self.params: Optional["SketchParams"] = None
        self.rows_seen = 0
        self.energy_sum = 0.0
        self.max_energy = 0.0
        self.rho_violations = 0
        self._sketch: Optional[BottomK] = None
        self._all_rows: list[np.ndarray] = []
        self._all_ids: list[np.ndarray] = []
        self._ids_issued = 0          # default ids handed out (caller's thread)
        self.finished = False
        self.spooled = False          # the share went to the offline spool
        self.response = None
        self._report: Optional[GenerationReport] = None
        self._finishing = False       # finish() called (async: queued)
        self._failed: Optional[Exception] = None
        self._done = threading.Event()  # set once the share was sent, spooled or failed

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None and not self._finishing:
            self.finish()
        return False

    # ------------------------------------------------------------ rows
    def send(self, embeddings: Any, sample_ids: Optional[Iterable[int] | np.ndarray] = None) -> None:
        """Adds [rows, m] embeddings (torch or numpy; fp32/fp16/bf16/fp64) to this rank's share."""
        self.mon._raise_pending()
        if self._finishing:
            raise RuntimeError("generation already finished")
        arr, kind = to_wire(embeddings)
        rows, m = arr.shape
        if self.m is None:
            self.m, self.kind = m, kind
            self.mon._last_kind = kind
        else:
            if m != self.m:
                raise invalid(f"dimension {m} differs from this generation's m = {self.m}")
            if kind != self.kind:
                raise invalid(f"dtype {kind} differs from this generation's dtype {self.kind}")
        if sample_ids is None:
            base = self._ids_issued + (self.mon.rank << 40)
            ids = np.arange(base, base + rows, dtype=np.uint64)
        else:
            try:
                ids = as_ids(sample_ids)
            except (ValueError, TypeError, OverflowError) as e:
                raise invalid(str(e)) from None
            if ids.size != rows:
                raise invalid(f"{ids.size} sample ids for {rows} rows")
        if rows == 0:
            return
        if self.mon._async is None:
            self._add(arr, ids)
        elif not self.mon._async.put_rows(self, arr.copy(), ids.copy()):
            self.mon._dropped(self, rows)
        self._ids_issued += rows

    def _add(self, arr: np.ndarray, ids: np.ndarray) -> None:
        """Pre-sketches one validated block (caller's thread in sync mode, else the worker)."""
        if self.params is None:
            self.params = self.mon._sketch_params(self.m)
            self._sketch = BottomK(self.params.n_a, self.params.seed)
        vals = to_float(arr, self.kind)
        if not np.isfinite(vals).all():
            bad = int(np.flatnonzero(~np.isfinite(vals).all(axis=1))[0])
            raise invalid(f"row {self.rows_seen + bad} holds NaN or Inf")
        e = row_energies(vals, self.params.preprocessing)
        refusal = row_refusal(vals, e, self.params.preprocessing, first_row=self.rows_seen)
        if refusal:
            raise invalid(refusal)
        self.energy_sum += float(e.sum())
        self.max_energy = max(self.max_energy, float(e.max()))
        # sigmad's rule (ingest_rules.h ExceedsBudget): a row violates rho when its energy exceeds it.
        self.rho_violations += int((e > self.params.rho).sum())
        self.rows_seen += arr.shape[0]
        if self.mon.presketch:
            self._sketch.add(arr, ids)
        else:
            self._all_rows.append(arr)
            self._all_ids.append(ids)

    @property
    def presketched(self) -> bool:
        """True when the local sketch dropped rows (then EndOfShare carries the energies)."""
        if not self.mon.presketch or self._sketch is None:
            return False
        return len(self._sketch) < self.rows_seen

    def _rows_to_send(self):
        if self.mon.presketch:
            if self._sketch is None or self._sketch.rows is None:
                return None, None
            return self._sketch.rows, self._sketch.ids
        if not self._all_rows:
            return None, None
        return np.concatenate(self._all_rows), np.concatenate(self._all_ids)

    # ------------------------------------------------------------ the share
    def finish(self) -> Optional[GenerationReport]:
        """Sends this rank's share (retried on UNAVAILABLE/DEADLINE_EXCEEDED). Returns the
        report when this rank's EndOfShare sealed the snapshot, else None. Async mode:
        queues the share and returns None at once (gen.wait() blocks for the report)."""
        if self._finishing:
            return self._report
        self.mon._raise_pending()
        self._finishing = True
        if self.mon._async is not None:
            self.mon._async.put_finish(self)
            return None
        try:
            self._finish_now()
        except Exception as e:
            self._finishing = False  # finish() may be called again
            self.mon._fail(e, f"generation {self.k}")
        return self._report

    def _finish_now(self) -> None:
        """Sends (or spools) the share; raises what the delivery raised."""
        if self._failed is not None:
            raise SigmaError(getattr(self._failed, "code", grpc.StatusCode.UNKNOWN),
                             f"generation {self.k} of {self.mon.job}/{self.mon.tap} not sent: "
                             f"a block failed earlier ({self._failed})")
        resp = self._deliver_without_rows() if self.m is None else self.mon._deliver(self)
        self.response = resp
        if resp is not None and resp.sealed and resp.HasField("report"):
            self._report = report_from_proto(resp.report)
        self.spooled = resp is None
        self.finished = True
        self._mark_done()

    def _deliver_without_rows(self):
        """No send() at all: the share takes the tap's m and the dtype of the open snapshot
        (else the tap's latest) from the daemon (GetJob; sending an empty [0, m] array of
        the right dtype avoids this). When another rank opened the snapshot in another
        dtype meanwhile (refused), once more with that one."""
        try:
            return self.mon._deliver(self)
        except SigmaError as e:
            refused, sent = e, self.kind
            self.m, self.kind = None, None  # asked again at the next attempt
            if e.code != grpc.StatusCode.INVALID_ARGUMENT:
                raise
        m, kind = self.mon._empty_share_shape(self.k)
        if kind is None or kind == sent:
            raise refused
        self.m, self.kind = m, kind
        return self.mon._deliver(self)

    def _mark_done(self) -> None:
        self._done.set()

    @property
    def sealed(self) -> bool:
        return self._report is not None

    @property
    def report(self) -> GenerationReport:
        """The sealed report: the one this rank's share sealed, else asked of the daemon
        (GetReport). Raises NotSealedError while the snapshot is open (other ranks
        missing, or the share still queued in async mode): gen.wait() blocks for it."""
        if self._report is None and self.finished and not self.spooled:
            self._report = self.mon.get_report(self.k)
        if self._report is None:
            if not self._finishing:
                why = "this rank's share is not finished (leave the with-block or call finish())"
            elif not self.finished:
                why = "this rank's share is still queued (async mode)"
            elif self.spooled:
                why = "this rank's share is in the offline spool (python -m sigma_client sync)"
            else:
                why = "other ranks have not sent their share yet"
            raise NotSealedError(grpc.StatusCode.FAILED_PRECONDITION,
                                 f"generation {self.k} of {self.mon.job}/{self.mon.tap} has not "
                                 f"sealed: {why}; gen.wait(timeout) blocks until it seals",
                                 rpc="GetReport", target=self.mon.target)
        return self._report

    def wait(self, timeout: float = 60.0, poll: float = 0.05,
             resend_every: Optional[float] = None) -> GenerationReport:
        """Blocks until the snapshot has sealed (all ranks finished, or closed) and returns it.

        resend_every: re-send this rank's share every so many seconds while waiting (the
        daemon counts a (rank, seq) once). A daemon restarted after this rank finished has
        lost the open snapshot with this share, which then never seals; each re-send costs
        the share's bytes again, so it is off by default."""
        deadline = time.monotonic() + timeout
        if not self._finishing:
            self.finish()
        if not self._done.wait(max(0.0, deadline - time.monotonic())):
            self._timeout(timeout)
        self.mon._raise_pending()
        next_resend = time.monotonic() + resend_every if resend_every else math.inf
        while True:
            if self._report is not None:
                return self._report
            # A spooled share may have been sent meanwhile (the worker drains the spool).
            self._report = self.mon.get_report(self.k)
            if self._report is not None:
                return self._report
            if time.monotonic() >= next_resend:
                resp = self.mon._send_share(self)
                self.spooled = False
                if resp.sealed and resp.HasField("report"):
                    self._report = report_from_proto(resp.report)
                    return self._report
                next_resend = time.monotonic() + resend_every
            if time.monotonic() > deadline:
                self._timeout(timeout)
            time.sleep(poll)
            poll = min(poll * 1.5, 1.0)

    def _timeout(self, timeout: float):
        raise SigmaError(grpc.StatusCode.DEADLINE_EXCEEDED,
                         f"generation {self.k} of {self.mon.job}/{self.mon.tap} did not "
                         f"seal within {timeout} s", rpc="GetReport", target=self.mon.target)

    def seal(self) -> GenerationReport:
        """Explicit close: seals the generation with whatever ranks have sent."""
        if not self._finishing:
            self.finish()
        self.mon._raise_pending()
        self._report = self.mon.close_generation(self.k)
        return self._report
