"""Generates the gRPC stubs from ../../proto (or $SIGMA_PROTO_ROOT) before setuptools
collects the package, so that wheels and installs carry sigma_client/_proto/."""
import importlib.util
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
GEN_FILE = HERE / "src" / "sigma_client" / "_generate.py"


def _generate():
    # Load _generate.py by path: importing the package would need grpc/numpy.
    spec = importlib.util.spec_from_file_location("_sigma_generate", GEN_FILE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.generate(HERE / "src" / "sigma_client" / "_proto")
    print(f"sigma_client: generated stubs in {out}", file=sys.stderr)


class BuildPy(build_py):
    def run(self):
        _generate()
        super().run()


if not (HERE / "src" / "sigma_client" / "_proto" / "sigma_pb2.py").exists():
    _generate()  # before package discovery, so sigma_client._proto is found

setup(cmdclass={"build_py": BuildPy})
