"""Resume bookkeeping: a step is done when its marker file exists; markers are written
atomically after the step's outputs, so an interrupted step is simply redone."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable


class Steps:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _marker(self, name: str) -> Path:
        safe = name.replace("/", "__")
        return self.root / f"{safe}.done.json"

    def done(self, name: str) -> bool:
        return self._marker(name).exists()

    def result(self, name: str) -> Any:
        return json.loads(self._marker(name).read_text())["result"]

    def mark(self, name: str, result: Any = None, seconds: float | None = None) -> None:
        path = self._marker(name)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"step": name, "result": result, "seconds": seconds,
                                   "finished_unix": time.time()}))
        os.replace(tmp, path)

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        """Runs fn once; later calls return the recorded result without running it."""
        if self.done(name):
            return self.result(name)
        t0 = time.time()
        res = fn()
        self.mark(name, res, time.time() - t0)
        return res

    def seconds(self, name: str) -> float | None:
        if not self.done(name):
            return None
        return json.loads(self._marker(name).read_text()).get("seconds")

    def list(self) -> list[str]:
        return sorted(json.loads(p.read_text())["step"] for p in self.root.glob("*.done.json"))


def atomic_write_json(path: Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)
