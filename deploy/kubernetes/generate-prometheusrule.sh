#!/usr/bin/env bash
# Prints a PrometheusRule whose spec.groups is deploy/prometheus/sigma-rules.yml,
# verbatim (indented), so the cluster runs exactly the promtool-tested rules.
#   deploy/kubernetes/generate-prometheusrule.sh | kubectl apply -f -
set -euo pipefail
rules="$(dirname "$0")/../prometheus/sigma-rules.yml"
cat <<HEADER
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: sigma-rules
  namespace: sigma
  labels: {app.kubernetes.io/name: sigmad}
spec:
HEADER
grep -v '^#' "$rules" | sed 's/^/  /'
