"""Daemon-free tests: the spec's sketch hash, the local bottom-k, targets, dtypes."""
import json

import numpy as np
import pytest

from sigma_client import sketch
from sigma_client.errors import SigmaError
from sigma_client.tensors import BF16, FP16, FP32, FP64, row_energies, to_float, to_wire


@pytest.fixture(scope="module")
def vec(testvectors):
    return json.loads((testvectors / "sketch.json").read_text())


def test_splitmix64_scalar_matches_vectorised():
    xs = [0, 1, 2**63, 2**64 - 1, 0x9E3779B97F4A7C15, 12345678901234567890]
    vec_out = sketch.splitmix64(np.array(xs, dtype=np.uint64)).tolist()
    assert vec_out == [sketch.splitmix64_int(x) for x in xs]
    # splitmix64(0) of the reference generator's first output (state 0).
    assert sketch.splitmix64_int(0) == 0xE220A8397B1DCDAF


def test_priorities_of_first_5(vec):
    ids = np.array(vec["sample_ids"][:5], dtype=np.uint64)
    assert sketch.priorities(vec["seed"], ids).tolist() == vec["priorities_of_first_5"]


def test_expected_selected(vec):
    ids = np.array(vec["sample_ids"], dtype=np.uint64)
    assert len(set(vec["sample_ids"])) < len(vec["sample_ids"]), "the vector has duplicates"
    sel = sketch.bottom_k(vec["seed"], ids, vec["k"])
    assert ids[sel].tolist() == vec["expected_selected"]


@pytest.mark.parametrize("chunk", [1, 7, 64, 100, 10_000])
def test_streaming_bottom_k_matches(vec, chunk):
    ids = np.array(vec["sample_ids"], dtype=np.uint64)
    rows = np.arange(ids.size, dtype=np.float32)[:, None].repeat(3, axis=1)
    b = sketch.BottomK(vec["k"], vec["seed"])
    for i in range(0, ids.size, chunk):
        b.add(rows[i:i + chunk], ids[i:i + chunk])
    assert b.ids.tolist() == vec["expected_selected"]
    # Each kept row is the first row seen with that id.
    first = {}
    for i, v in enumerate(vec["sample_ids"]):
        first.setdefault(v, i)
    assert b.rows[:, 0].tolist() == [float(first[v]) for v in vec["expected_selected"]]


def test_local_sketches_contain_global(vec):
    """The global bottom-k is the bottom-k of the union of the ranks' local bottom-k."""
    ids = np.array(vec["sample_ids"], dtype=np.uint64)
    k = vec["k"]
    for world in (2, 3, 5):
        local = []
        for r in range(world):
            part = ids[r::world]
            local.append(part[sketch.bottom_k(vec["seed"], part, k)])
        union = np.concatenate(local)
        assert union[sketch.bottom_k(vec["seed"], union, k)].tolist() == vec["expected_selected"]


def test_ties_go_to_smaller_id():
    # Same id twice is one id; distinct ids have distinct priorities in practice, so check
    # the order key directly: (priority, id) lexicographic.
    ids = np.array([5, 3, 5, 9, 3], dtype=np.uint64)
    sel = sketch.bottom_k(0, ids, 10)
    got = ids[sel].tolist()
    pr = dict(zip(ids.tolist(), sketch.priorities(0, ids).tolist()))
    assert sorted(set(ids.tolist()), key=lambda i: (pr[i], i)) == got
    assert sel.tolist()[got.index(5)] == 0 and sel.tolist()[got.index(3)] == 1


def test_as_ids_rejects_negative():
    with pytest.raises(ValueError):
        sketch.as_ids([1, -2])
    assert sketch.as_ids([2**64 - 1]).tolist() == [2**64 - 1]


@pytest.mark.parametrize("bad", [[0.5, 1.5], [1.0, 2.0], ["0", "1"]])
def test_as_ids_rejects_non_integers(bad):
    """A float or string id is refused, never truncated (0.5 and 0.9 would both be id 0,
    and the pre-sketch would silently drop one of the two rows as a repeat)."""
    with pytest.raises(ValueError, match="integers"):
        sketch.as_ids(bad)
    assert sketch.as_ids([np.uint64(3), np.int32(4), 5]).tolist() == [3, 4, 5]


def test_as_ids_of_torch_tensors():
    torch = pytest.importorskip("torch")
    assert sketch.as_ids(torch.arange(3)).tolist() == [0, 1, 2]
    with pytest.raises(ValueError):
        sketch.as_ids(torch.tensor([0.5, 1.5]))


def test_fnv1a64_and_rendezvous_are_stable():
    # The published FNV-1a test values.
    assert sketch.fnv1a64(b"") == 0xCBF29CE484222325
    assert sketch.fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert sketch.fnv1a64(b"foobar") == 0x85944171F73967E8
    # The values pinned by the C++ client's tests (tests/client/client_test.cc).
    assert sketch.rendezvous_score("", "") == 0xA0490B007FCA3C4B
    assert sketch.rendezvous_score("127.0.0.1:50051", "my-job") == 0xA19008D9E849F1BF
    # Golden values, also written in docs/python-client.md.
    assert sketch.rendezvous_score("127.0.0.1:50051", "opt125m-s2") == GOLDEN_SCORE
    targets = ["10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051"]
    assert [sketch.pick_target(targets, j) for j in ("job-a", "job-b", "job-c", "job-d")] == GOLDEN_PICKS
    # Order of the list does not matter; removing a non-chosen target changes nothing.
    for j in ("job-a", "job-b", "x", "y", "z"):
        t = sketch.pick_target(targets, j)
        assert sketch.pick_target(list(reversed(targets)), j) == t
        others = [x for x in targets if x != t]
        assert sketch.pick_target([t, others[0]], j) == t


def test_rendezvous_spreads_jobs():
    targets = [f"h{i}:1" for i in range(4)]
    counts = {t: 0 for t in targets}
    for i in range(4000):
        counts[sketch.pick_target(targets, f"job-{i}")] += 1
    assert min(counts.values()) > 800


def test_parse_targets():
    assert sketch.parse_targets(" a:1 , b:2,a:1 ") == ["a:1", "b:2"]
    assert sketch.parse_targets(["a:1", "b:2"]) == ["a:1", "b:2"]
    with pytest.raises(ValueError):
        sketch.parse_targets(" , ")


def test_to_wire_dtypes():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = (np.arange(12, dtype=np.float32).reshape(3, 4) - 5) / 4
    for arr, kind in ((x, FP32), (x.astype(np.float16), FP16), (x.astype(np.float64), FP64),
                      (x.astype(ml_dtypes.bfloat16), BF16)):
        w, k = to_wire(arr)
        assert k == kind
        assert w.flags.c_contiguous and w.dtype.byteorder in "<="
        np.testing.assert_array_equal(to_float(w, k), x)
    # bf16 goes out as its own 16-bit patterns.
    w, k = to_wire(x.astype(ml_dtypes.bfloat16))
    assert w.tobytes() == x.astype(ml_dtypes.bfloat16).tobytes()
    # Non-contiguous input is made contiguous.
    w, _ = to_wire(np.asfortranarray(x))
    assert w.tobytes() == x.tobytes()


@pytest.mark.parametrize("bad", [np.zeros((3, 4), dtype=np.int32), np.zeros(4, dtype=np.float32),
                                 np.zeros((3, 0), dtype=np.float32)])
def test_to_wire_rejects(bad):
    with pytest.raises(SigmaError) as e:
        to_wire(bad)
    assert e.value.code.name == "INVALID_ARGUMENT"


def test_row_energies():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    assert row_energies(x, "none").tolist() == [25.0, 0.0, 1.0]
    assert row_energies(x, "l2").tolist() == [1.0, 0.0, 1.0]


@pytest.mark.parametrize("scale", [1e155, 1e-170, 1e-300])
def test_row_energies_of_scaled_rows(scale):
    # Issue 14 item 6: the plain sum of squares over/underflows (1e-170 rows got
    # energy 0 under l2); the scaled norm keeps every nonzero row at 1.
    rng = np.random.default_rng(5)
    x = rng.standard_normal((20, 7))
    assert row_energies(x * scale, "l2").tolist() == [1.0] * 20
    ssq, exp = sketch.row_squares(x * scale)
    ref = np.einsum("ij,ij->i", x, x)
    np.testing.assert_allclose(np.ldexp(np.sqrt(ssq), exp) / scale, np.sqrt(ref), rtol=1e-13)


def test_row_energies_none_scaled_and_ordinary():
    x = np.array([[3e-150, 4e-150], [3.0, 4.0]])
    np.testing.assert_allclose(row_energies(x, "none"), [25e-300, 25.0], rtol=1e-15)
    assert row_energies(np.array([[1e160, 0.0]]), "none").tolist() == [np.inf]  # the daemon refuses it


def test_torch_tensors_to_wire():
    torch = pytest.importorskip("torch")
    x = (torch.arange(12, dtype=torch.float32).reshape(3, 4) - 5) / 4
    for t, kind in ((x, FP32), (x.half(), FP16), (x.bfloat16(), BF16), (x.double(), FP64)):
        w, k = to_wire(t)
        assert k == kind
        np.testing.assert_array_equal(to_float(w, k), x.numpy())
    w, _ = to_wire(x.bfloat16())
    assert w.tobytes() == x.bfloat16().view(torch.int16).numpy().tobytes()
    # A lazily negated view (neg bit set), which .numpy() refuses.
    w, k = to_wire(torch._neg_view(x))
    assert k == FP32
    np.testing.assert_array_equal(w, -x.numpy())


GOLDEN_SCORE = 0x59447C1287F5EA0F
GOLDEN_PICKS = ["10.0.0.1:50051", "10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.1:50051"]
