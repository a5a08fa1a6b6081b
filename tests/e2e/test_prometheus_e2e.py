"""End-to-end: sigmad + a real Prometheus (scraping every second, the shipped
rules loaded) + a real Alertmanager (the shipped routes, sending to a local
webhook receiver). A collapsing job is streamed through the Python client;
then, through Prometheus's HTTP API: the drift series exist, the collapse alert
fires, the webhook receives it, and every expression of the Grafana dashboard
returns data. Then sigmad stops: the collapse alert keeps firing (keep_firing_for),
SigmadDown fires, Alertmanager shows the collapse alert inhibited by it, and the
webhook receives no "resolved" notice for it (issue 15 item 5)."""
import http.server
import json
import os
import pathlib
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
JOB = "e2e-collapse"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as e:  # server not up yet
            last = e
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def http_json(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


class Webhook(http.server.BaseHTTPRequestHandler):
    received = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Webhook.received.append((self.path, json.loads(body)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    sigmad = os.environ.get("SIGMAD")
    if not sigmad:
        pytest.skip("SIGMAD is not set (make test sets it to the built daemon)")
    for tool in ("prometheus", "prometheus-alertmanager"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (scripts/deps.sh installs it)")
    tmp = tmp_path_factory.mktemp("e2e")
    procs = []

    # The webhook receiver.
    hook_port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", hook_port), Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    # sigmad.
    port_file = tmp / "ports.json"
    sigmad_proc = subprocess.Popen(
        [sigmad, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
         "--db", str(tmp / "sigma.db"), "--backend", "cpu", "--port-file", str(port_file)],
        stdout=open(tmp / "sigmad.log", "w"), stderr=subprocess.STDOUT)
    procs.append(sigmad_proc)
    ports = wait_for(lambda: port_file.exists() and json.loads(port_file.read_text()), 30,
                     "sigmad's port file")

    # Alertmanager with the shipped routes, receivers pointed at the webhook.
    am_config = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    for receiver in am_config["receivers"]:
        for hook in receiver["webhook_configs"]:
            path = urllib.parse.urlparse(hook["url"]).path
            hook["url"] = f"http://127.0.0.1:{hook_port}{path}"
    am_config["route"]["group_wait"] = "1s"
    (tmp / "alertmanager.yml").write_text(yaml.safe_dump(am_config))
    am_port = free_port()
    procs.append(subprocess.Popen(
        ["prometheus-alertmanager", f"--config.file={tmp / 'alertmanager.yml'}",
         f"--storage.path={tmp / 'am'}", f"--web.listen-address=127.0.0.1:{am_port}",
         "--cluster.listen-address="],
        stdout=open(tmp / "alertmanager.log", "w"), stderr=subprocess.STDOUT))

    # Prometheus with the shipped scrape config and rules, at 1 s.
    prom_config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    prom_config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    prom_config["rule_files"] = [str(DEPLOY / "prometheus" / "sigma-rules.yml")]
    prom_config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [
        f"127.0.0.1:{am_port}"]
    prom_config["scrape_configs"][0]["static_configs"][0]["targets"] = [
        f"127.0.0.1:{ports['metrics_port']}"]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(prom_config))
    prom_port = free_port()
    procs.append(subprocess.Popen(
        ["prometheus", f"--config.file={tmp / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=open(tmp / "prometheus.log", "w"), stderr=subprocess.STDOUT))
    prom = f"http://127.0.0.1:{prom_port}"
    wait_for(lambda: urllib.request.urlopen(prom + "/-/ready", timeout=2).status == 200, 60,
             "Prometheus ready")
    wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{am_port}/-/ready",
                                            timeout=2).status == 200, 60, "Alertmanager ready")
    try:
        yield {"grpc": f"127.0.0.1:{ports['grpc_port']}", "prom": prom, "tmp": tmp,
               "am": f"http://127.0.0.1:{am_port}", "sigmad": sigmad_proc}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        server.shutdown()


def contracting_embeddings(generation, rows, m, rng):
    """Rows whose spectrum contracts with the generation: eigenvalue i of the
    covariance scales as decay**(generation * i), so the log-determinant of the
    (l2-normalised) Gram falls by roughly a nat per dimension per generation."""
    decay = 0.75 ** generation
    scales = decay ** np.arange(m)
    return (rng.standard_normal((rows, m)) * np.sqrt(scales)).astype(np.float32)


def query(prom, expr):
    out = http_json(prom + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert out["status"] == "success", out
    return out["data"]["result"]


def test_collapse_reaches_prometheus_alertmanager_and_the_dashboard(stack):
    import sigma_client

    m, rows = 16, 2048
    rng = np.random.default_rng(20261128)
    mon = sigma_client.Monitor(stack["grpc"], job=JOB, tap="last_hidden", rank=0, world_size=1,
                               n_a=1024, delta=1e-6, rho=1.0, preprocessing="l2", seed=0)
    reports = []
    for generation in range(4):
        with mon.generation(generation, corpus_size=rows) as gen:
            gen.send(contracting_embeddings(generation, rows, m, rng))
        reports.append(gen.report)
    assert reports[-1].track2_drift < 0
    assert reports[-1].track2_drift / m <= -0.5, [r.track2_drift for r in reports]

    # One bad batch (NaN), refused by the daemon: the rejected-batches series.
    bad = contracting_embeddings(0, 8, m, rng)
    bad[3, 2] = np.nan
    with pytest.raises(sigma_client.SigmaError):
        with mon.generation(99) as gen:
            gen.send(bad)

    prom = stack["prom"]
    series = wait_for(lambda: query(prom, f'sigma_track2_drift{{job_name="{JOB}"}}'), 30,
                      "the drift series in Prometheus")
    assert series[0]["metric"]["tap"] == "last_hidden"
    assert series[0]["metric"]["job"] == "sigmad"  # the scrape job keeps Prometheus' label
    value = float(series[0]["value"][1])
    assert abs(value - reports[-1].track2_drift) < 1e-6 * max(1.0, abs(value))

    def collapse_firing():
        alerts = http_json(prom + "/api/v1/alerts")["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "SigmaCollapseContraction"
                and a["labels"].get("job_name") == JOB and a["state"] == "firing"]
    firing = wait_for(collapse_firing, 60, "SigmaCollapseContraction firing")
    assert firing[0]["labels"]["severity"] == "critical"

    def webhook_got_it():
        return [body for path, body in Webhook.received
                for a in body["alerts"]
                if a["labels"]["alertname"] == "SigmaCollapseContraction"
                and a["labels"].get("job_name") == JOB and path == "/alerts/critical"]
    wait_for(webhook_got_it, 60, "the webhook receiving the critical collapse alert")

    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "sigma-monitor.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for expr in exprs:
        concrete = expr.replace("$job", JOB).replace("$tap", ".*")
        wait_for(lambda: query(prom, concrete), 30, f"data for dashboard expression {concrete}")
    for variable in dashboard["templating"]["list"]:
        q = variable["query"]["query"]
        inner = q[len("label_values("):-1].rsplit(",", 1)[0].replace("$job", JOB)
        assert query(prom, inner), q

    # The outage: sigmad stops. Its series go stale at once; the collapse alert
    # must keep firing (no false "resolved"), SigmadDown must fire after its 1m
    # `for:`, and Alertmanager must hold the collapse alert as inhibited.
    stack["sigmad"].terminate()
    stack["sigmad"].wait(timeout=30)
    wait_for(lambda: not query(prom, f'sigma_track2_drift{{job_name="{JOB}"}}'), 30,
             "the drift series going stale")
    assert collapse_firing(), "the collapse alert resolved when sigmad stopped"

    def sigmad_down_firing():
        alerts = http_json(prom + "/api/v1/alerts")["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "SigmadDown" and a["state"] == "firing"]
    wait_for(sigmad_down_firing, 120, "SigmadDown firing")
    assert collapse_firing(), "the collapse alert resolved during the outage"

    def collapse_inhibited():
        alerts = http_json(stack["am"] + "/api/v2/alerts")
        return [a for a in alerts if a["labels"]["alertname"] == "SigmaCollapseContraction"
                and a["labels"].get("job_name") == JOB and a["status"]["inhibitedBy"]]
    wait_for(collapse_inhibited, 60, "Alertmanager inhibiting the collapse alert")
    time.sleep(3)  # a few group_wait periods: nothing may be sent for it
    resolved = [a for _, body in Webhook.received for a in body["alerts"]
                if a["labels"]["alertname"] == "SigmaCollapseContraction" and a["status"] == "resolved"]
    assert not resolved, resolved
