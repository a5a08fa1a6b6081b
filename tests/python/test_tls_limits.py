"""Monitor over TLS and mutual TLS, and through the daemon's rate limit, against a real sigmad."""
from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request

import grpc
import numpy as np
import pytest

from sigma_client import Monitor
from sigma_client.daemon import start_sigmad
from sigma_client.errors import SigmaError


def _binary():
    binary = os.environ.get("SIGMAD")
    if not binary:
        pytest.skip("SIGMAD is not set")
    return binary


def rows(seed: int, n: int = 64, m: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, m)).astype(np.float32)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    openssl = shutil.which("openssl")
    if not openssl:
        pytest.skip("openssl is not installed (needed to make test certificates)")
    d = tmp_path_factory.mktemp("certs")
    q = dict(check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=d)
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
                    "-out", "ca.pem", "-days", "1", "-subj", "/CN=sigma-test-ca"], **q)
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
                    "-out", "server.pem", "-days", "1", "-subj", "/CN=sigmad.test",
                    "-addext", "subjectAltName=DNS:sigmad.test"], **q)
    subprocess.run([openssl, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key",
                    "-out", "client.csr", "-subj", "/CN=trainer"], **q)
    subprocess.run([openssl, "x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                    "-CAcreateserial", "-out", "client.pem", "-days", "1"], **q)
    return d


@pytest.fixture(scope="module")
def tlsd(certs, tmp_path_factory):
    d = start_sigmad(_binary(), tmp_path_factory.mktemp("tlsd"),
                     extra_args=["--backend", "cpu", "--tls-cert", str(certs / "server.pem"),
                                 "--tls-key", str(certs / "server.key"),
                                 "--tls-client-ca", str(certs / "ca.pem")])
    yield d
    d.stop()


def test_mutual_tls_streams_and_reports(tlsd, certs):
    mon = Monitor(tlsd.target, job="tls.a", rank=0, world_size=1, n_a=32,
                  tls_ca=str(certs / "server.pem"), tls_cert=str(certs / "client.pem"),
                  tls_key=str(certs / "client.key"), tls_server_name="sigmad.test")
    with mon.generation(0) as gen:
        gen.send(rows(1))
    assert gen.sealed and gen.report is not None
    assert [r.generation for r in mon.history()] == [0]


def test_tls_without_client_certificate_or_plaintext_fails(tlsd, certs):
    no_cert = Monitor(tlsd.target, job="tls.a", rank=0, world_size=1, max_retries=0, timeout=5,
                      tls_ca=str(certs / "server.pem"), tls_server_name="sigmad.test")
    with pytest.raises(SigmaError) as e:
        no_cert.history()
    assert e.value.code == grpc.StatusCode.UNAVAILABLE
    plain = Monitor(tlsd.target, job="tls.a", rank=0, world_size=1, max_retries=0, timeout=5)
    with pytest.raises(SigmaError) as e:
        plain.history()
    assert e.value.code == grpc.StatusCode.UNAVAILABLE


def test_tls_options_are_checked():
    with pytest.raises(ValueError, match="go together"):
        Monitor("127.0.0.1:1", job="x", rank=0, world_size=1, tls_cert="a.pem")
    with pytest.raises(ValueError, match="cannot read"):
        Monitor("127.0.0.1:1", job="x", rank=0, world_size=1, tls_ca="/nonexistent/ca.pem")


def test_rate_limited_generation_is_retried_to_completion(tmp_path):
    # 30000 B/s, burst 6000: a 400 x 8 fp32 share (12.8 KB) sent in 1 KiB batches
    # hits the limit; the client waits the daemon's hint and resends (duplicates
    # are free) until the snapshot seals; the values equal an unlimited daemon's.
    limited = start_sigmad(_binary(), tmp_path / "limited",
                           extra_args=["--backend", "cpu", "--rate-limit-bytes-per-second", "30000",
                                       "--rate-limit-burst-bytes", "6000"])
    free = start_sigmad(_binary(), tmp_path / "free", extra_args=["--backend", "cpu"])
    try:
        data = rows(7, n=400)
        reports = []
        for d in (limited, free):
            mon = Monitor(d.target, job="rl.a", rank=0, world_size=1, n_a=512, presketch=False,
                          batch_bytes=1024, backoff=0.01, max_backoff=0.05, max_retries=60)
            with mon.generation(0) as gen:
                gen.send(data)
            reports.append(gen.wait(30))
        a, b = reports
        assert a.track2 == b.track2 and a.track1_lower == b.track1_lower
        scrape = urllib.request.urlopen(limited.metrics_url, timeout=10).read().decode()
        line = [x for x in scrape.splitlines()
                if x.startswith('sigma_rejected_batches_total{reason="rate_limited"}')]
        assert line and float(line[0].split()[-1]) >= 1, line
    finally:
        limited.stop()
        free.stop()
