"""The stubs come from proto/ (daemon-free)."""
import importlib.util
import subprocess
import sys

from conftest import REPO, SRC


def test_generate_into_a_fresh_directory(tmp_path):
    p = subprocess.run([sys.executable, "-m", "sigma_client._generate", "--out", str(tmp_path / "_proto"),
                        "--proto-root", str(REPO / "proto")],
                       capture_output=True, text=True, cwd=SRC)
    assert p.returncode == 0, p.stderr
    for f in ("sigma_pb2.py", "sigma_pb2_grpc.py", "__init__.py", "proto/sigma/v1/sigma.proto"):
        assert (tmp_path / "_proto" / f).is_file(), f
    text = (tmp_path / "_proto" / "sigma_pb2_grpc.py").read_text()
    assert "from . import sigma_pb2" in text and "from sigma.v1 import" not in text
    assert (tmp_path / "_proto" / "proto/sigma/v1/sigma.proto").read_text() == \
        (REPO / "proto/sigma/v1/sigma.proto").read_text()


def test_stubs_match_the_proto():
    from sigma_client import _pb

    pb2, grpc_mod = _pb.load()
    assert pb2.DESCRIPTOR.package == "sigma.v1"
    svc = pb2.DESCRIPTOR.services_by_name["SigmaMonitor"]
    assert {m.name for m in svc.methods} == {"Ingest", "CloseGeneration", "GetHistory",
                                             "ListJobs", "ConfigureJob", "GetJob", "GetReport",
                                             "DeleteJob", "FinishJob", "ListSnapshots"}
    assert hasattr(grpc_mod, "SigmaMonitorStub")


def test_report_dataclass_covers_every_proto_field():
    import dataclasses

    from sigma_client import _pb
    from sigma_client.report import GenerationReport, PerDimension, ReportFlags

    pb2, _ = _pb.load()
    for cls, msg in ((GenerationReport, pb2.GenerationReport), (ReportFlags, pb2.ReportFlags),
                     (PerDimension, pb2.PerDimension)):
        assert {f.name for f in dataclasses.fields(cls)} == {f.name for f in msg.DESCRIPTOR.fields}, cls


def _package_copy(tmp_path):
    """(the package copied without stubs, load): load(code) runs `code` in a fresh
    interpreter after `pb2, g = p.load()` on the copy and returns the finished process."""
    import shutil

    pkg = tmp_path / "sigma_client"
    shutil.copytree(SRC / "sigma_client", pkg, ignore=shutil.ignore_patterns("_proto", "__pycache__"))
    env = {"PYTHONPATH": str(tmp_path), "SIGMA_PROTO_ROOT": str(REPO / "proto"), "PATH": "/usr/bin:/bin"}

    def load(code):
        return subprocess.run([sys.executable, "-c", "import sigma_client._pb as p; pb2, g = p.load(); " + code],
                              capture_output=True, text=True, env=env)
    return pkg, load


def test_missing_or_stale_stubs_are_regenerated_on_import(tmp_path):
    pkg, load = _package_copy(tmp_path)
    code = "print(pb2.__file__); assert hasattr(g, 'SigmaMonitorStub')"
    p = load(code)
    assert p.returncode == 0, p.stderr
    assert str(pkg / "_proto" / "sigma_pb2.py") in p.stdout
    # A stub the runtime rejects (here: one that fails to import) is replaced.
    (pkg / "_proto" / "sigma_pb2.py").write_text("raise ImportError('stale gencode')\n")
    p = load(code)
    assert p.returncode == 0, p.stderr
    assert "stale" not in (pkg / "_proto" / "sigma_pb2.py").read_text()


def test_stubs_of_another_proto_are_regenerated_on_import(tmp_path):
    """Stubs generated before sigma.proto changed (new RPCs) are regenerated: the copy of
    the proto they were made from differs from the source's."""
    pkg, load = _package_copy(tmp_path)
    code = "assert hasattr(pb2, 'GetReportRequest'), 'stale stubs'"
    p = load(code)
    assert p.returncode == 0, p.stderr
    # Stubs of an older proto: without GetReport, and the copy of that proto.
    copy = pkg / "_proto" / "proto" / "sigma" / "v1" / "sigma.proto"
    copy.write_text(copy.read_text() + "\n// an older revision\n")
    stub = pkg / "_proto" / "sigma_pb2.py"
    stub.write_text(stub.read_text() + "\ndel GetReportRequest\n")
    p = load(code)
    assert p.returncode == 0, p.stderr
    assert copy.read_text() == (REPO / "proto/sigma/v1/sigma.proto").read_text()
