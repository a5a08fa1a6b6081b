"""Resume bookkeeping: a step runs once, an interrupted step runs again."""
import sys
from pathlib import Path

# experiments/sigma_exp is a plain source package (not installed): import it from the tree.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
import pytest

from sigma_exp.state import Steps, atomic_write_json


def test_step_runs_once_and_survives_restart(tmp_path):
    calls = []
    s = Steps(tmp_path / "steps")
    assert s.run("gen0/train", lambda: calls.append(1) or {"loss": 1.5}) == {"loss": 1.5}
    assert s.run("gen0/train", lambda: calls.append(2) or {"loss": 9}) == {"loss": 1.5}
    again = Steps(tmp_path / "steps")                 # a new process: same markers
    assert again.done("gen0/train") and again.result("gen0/train") == {"loss": 1.5}
    assert again.run("gen0/train", lambda: calls.append(3)) == {"loss": 1.5}
    assert calls == [1]
    assert again.list() == ["gen0/train"]
    assert again.seconds("gen0/train") >= 0


def test_failed_step_is_not_marked(tmp_path):
    s = Steps(tmp_path)

    def boom():
        raise RuntimeError("interrupted")
    with pytest.raises(RuntimeError):
        s.run("s2/gen3/generate", boom)
    assert not s.done("s2/gen3/generate")
    assert s.run("s2/gen3/generate", lambda: 7) == 7
    assert not list(tmp_path.glob("*.tmp"))


def test_names_with_slashes_do_not_collide(tmp_path):
    s = Steps(tmp_path)
    s.mark("s1/gen2/train", 1)
    assert s.done("s1/gen2/train") and not s.done("s2/gen2/train")


def test_atomic_write_json(tmp_path):
    p = tmp_path / "a" / "r.json"
    atomic_write_json(p, {"x": [1, 2]})
    assert p.read_text().replace(" ", "").replace("\n", "") == '{"x":[1,2]}'
    assert not list(p.parent.glob("*.tmp"))
