#!/usr/bin/env bash
# Checks of everything under deploy/, docker-compose.yml and configs/gpu.yaml, runnable without
# a Docker engine, a GPU or a cluster. The checks live in tests/tools/deploy/ and this
# script runs exactly that folder, as `make test` and CI do, with every tool required (a missing
# docker-compose, promtool, caddy or kubectl fails instead of skipping; CI installs them). Among
# them: compose resolves for the default and the https profile and publishes nothing but Caddy
# beyond the host's loopback, Caddy passes only the protocol's POSTs, `kubectl kustomize` builds
# deploy/k8s, the k8s NetworkPolicies admit only the Gateway, the endpoint picker and Prometheus
# to the server and only the Gateway and Prometheus to the picker, every container drops its
# privileges (the compose server on a read-only root, Caddy as a user without capabilities),
# Grafana refuses the placeholder password, and what the dashboard and KEDA query is on a running
# server's /metrics (the one check that starts a server: the project's venv, about 30 s).
#
#   deploy/check.sh                  run the checks
#   deploy/check.sh sync-configmap   rewrite deploy/k8s/configmap.yaml from configs/gpu.yaml
#
# Tools (Debian): apt-get install docker-compose prometheus caddy kubernetes-client
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [[ "${1:-}" == "sync-configmap" ]]; then
    out=deploy/k8s/configmap.yaml
    {
        echo "# Generated from configs/gpu.yaml by \`deploy/check.sh sync-configmap\`: edit that file,"
        echo "# then run the command. tests/tools/deploy/ fails when the two differ."
        echo "apiVersion: v1"
        echo "kind: ConfigMap"
        echo "metadata:"
        echo "  name: callgate-config"
        echo "  labels:"
        echo "    app.kubernetes.io/name: callgate"
        echo "    app.kubernetes.io/part-of: callgate"
        echo "data:"
        echo "  gpu.yaml: |"
        # Indent non-empty lines only, so the block scalar carries no trailing blanks.
        sed -e 's/^\(.\)/    \1/' configs/gpu.yaml
    } > "$out"
    echo "wrote $out"
    exit 0
fi

python="${PYTHON:-$root/.venv/bin/python}"
[[ -x "$python" ]] || python=python3
CALLGATE_REQUIRE_DEPLOY_TOOLS=1 exec "$python" -m pytest -q tests/tools/deploy "$@"
