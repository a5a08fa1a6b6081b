"""The shipped deployment files are valid for the real tools (promtool, amtool)
and consistent with each other. No daemon needed."""
import json
import pathlib
import re
import shutil
import subprocess

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def need(tool):
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed (scripts/deps.sh installs it)")
    return path


def run(*args, cwd=None):
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_promtool_checks_config_and_rules():
    out = run(need("promtool"), "check", "config", "prometheus.yml", cwd=DEPLOY / "prometheus")
    assert "SUCCESS" in out
    out = run(need("promtool"), "check", "rules", "sigma-rules.yml", cwd=DEPLOY / "prometheus")
    assert "11 rules found" in out


def test_promtool_rule_unit_tests():
    out = run(need("promtool"), "test", "rules", "tests/sigma-rules.test.yml",
              cwd=DEPLOY / "prometheus")
    assert "SUCCESS" in out


def test_every_rule_is_unit_tested_and_annotated():
    rules = yaml.safe_load((DEPLOY / "prometheus" / "sigma-rules.yml").read_text())
    tests = yaml.safe_load((DEPLOY / "prometheus" / "tests" / "sigma-rules.test.yml").read_text())
    tested = {case["alertname"] for t in tests["tests"] for case in t["alert_rule_test"]}
    fired = {case["alertname"] for t in tests["tests"] for case in t["alert_rule_test"]
             if case["exp_alerts"]}
    silent = {case["alertname"] for t in tests["tests"] for case in t["alert_rule_test"]
              if not case["exp_alerts"]}
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert names == tested
    assert names == fired, "every rule has a firing case"
    assert names == silent, "every rule has a not-firing case"
    for group in rules["groups"]:
        for rule in group["rules"]:
            ann = rule["annotations"]
            assert {"summary", "description"} <= set(ann), rule["alert"]
            # the training job is job_name; SigmadDown names the scrape target
            want = "$labels.instance" if rule["alert"] == "SigmadDown" else "$labels.job_name"
            assert want in ann["description"], rule["alert"]


def test_collapse_alerts_follow_sigma_alert_and_survive_an_outage():
    """Issue 15 item 5: the rules fire on the daemon's sigma_alert (one source of
    truth), hold through a scrape gap longer than SigmadDown's `for:`, and
    Alertmanager mutes SIGMA alerts while SigmadDown fires."""
    rules = yaml.safe_load((DEPLOY / "prometheus" / "sigma-rules.yml").read_text())
    by_name = {}
    for group in rules["groups"]:
        for rule in group["rules"]:
            by_name.setdefault(rule["alert"], []).append(rule)
    down = by_name.pop("SigmadDown")[0]
    assert "absent(up{" in down["expr"] and "== 0" in down["expr"]
    seconds = {"s": 1, "m": 60, "h": 3600}
    dur = lambda d: int(d[:-1]) * seconds[d[-1]]
    by_name.pop("SigmaStaleJob")
    for name, rs in by_name.items():
        for r in rs:
            assert "sigma_alert{" in r["expr"], name
            assert "per_dim" not in r["expr"] and "sigma_alert_threshold" not in r["expr"], name
            assert dur(r["keep_firing_for"]) > dur(down["for"]), name
    am = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    inhibit = [i for i in am["inhibit_rules"] if 'alertname="SigmadDown"' in i["source_matchers"]]
    assert inhibit and inhibit[0]["equal"] == ["job"]
    pattern = inhibit[0]["target_matchers"][0].split("=~", 1)[1].strip('"')
    for name in list(by_name) + ["SigmaStaleJob"]:
        assert re.fullmatch(pattern, name), name
    assert not re.fullmatch(pattern, "SigmadDown")
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert not prom["scrape_configs"][0].get("honor_labels", False)


def test_alertmanager_config():
    out = run(need("amtool"), "check-config", str(DEPLOY / "alertmanager" / "alertmanager.yml"))
    assert "SUCCESS" in out


def test_prometheusrule_is_generated_from_the_rules_file():
    out = run("bash", str(DEPLOY / "kubernetes" / "generate-prometheusrule.sh"))
    generated = yaml.safe_load(out)
    rules = yaml.safe_load((DEPLOY / "prometheus" / "sigma-rules.yml").read_text())
    assert generated["kind"] == "PrometheusRule"
    assert generated["spec"]["groups"] == rules["groups"]


def test_kubernetes_manifests_parse():
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "sigmad.yaml").read_text()))
    kinds = {d["kind"] for d in docs}
    assert kinds == {"Service", "StatefulSet", "ServiceMonitor"}
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["startupProbe"]["grpc"]["port"] == 50051
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_shared_store_manifests():
    """Replicas on PostgreSQL: no per-replica volume, the URL from a Secret,
    readiness on /readyz (not ready while the database is down)."""
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "sigmad-postgres.yaml").read_text()))
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    assert "volumeClaimTemplates" not in sts["spec"]
    container = sts["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--db") + 1] == "$(SIGMA_DB)"
    assert container["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "sigma-postgres"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    compose = yaml.safe_load((DEPLOY / "docker" / "compose-postgres.yml").read_text())
    services = compose["services"]
    assert {"postgres", "sigmad-0", "sigmad-1", "prometheus", "alertmanager", "grafana"} <= set(services)
    for name in ("sigmad-0", "sigmad-1"):
        entry = services[name]["entrypoint"]
        assert entry[entry.index("--db") + 1].startswith("postgresql://")
    prom = yaml.safe_load((DEPLOY / "docker" / "prometheus-compose-postgres.yml").read_text())
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == ["sigmad-0:9464", "sigmad-1:9464"]


def test_dashboard_expressions_use_known_metrics():
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "sigma-monitor.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert names == {"job", "tap"}  # Grafana variables; $job selects the label job_name
    for expr in exprs:
        assert re.search(r"\bsigma_[a-z_]+", expr), expr
        assert "job=~" not in expr, expr  # the training job's label is job_name
    assert any("sigma_drift_zscore" in e for e in exprs)


def test_deployments_probe_healthz_and_readyz_and_raise_the_fd_limit():
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "sigmad.yaml").read_text()))
    sts = next(d for d in docs if d and d.get("kind") == "StatefulSet")
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["readinessProbe"]["httpGet"]["port"] == "metrics"
    unit = (DEPLOY / "systemd" / "sigmad.service").read_text()
    assert re.search(r"^LimitNOFILE=\d+$", unit, re.M)
    assert "/readyz" in unit
    for dockerfile in ("Dockerfile.cpu", "Dockerfile.cuda"):
        text = (DEPLOY / "docker" / dockerfile).read_text()
        assert re.search(r"HEALTHCHECK .*\n.*curl .*9464/readyz", text), dockerfile
        assert "curl" in text.split("FROM")[-1], f"{dockerfile}: the runtime image needs curl for HEALTHCHECK"
