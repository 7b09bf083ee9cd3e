#!/usr/bin/env bash
# Install seqae as a systemd service on this host (run as root from a checkout).
#   deploy/systemd/install.sh [--cuda] [--with-retrain-timer] [--enable]
# Idempotent: existing configuration in /etc/seqae is never overwritten.
set -euo pipefail

PREFIX=/opt/seqae
CUDA=0
TIMER=0
ENABLE=0
for arg in "$@"; do
  case "$arg" in
    --cuda) CUDA=1 ;;
    --with-retrain-timer) TIMER=1 ;;
    --enable) ENABLE=1 ;;
    -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "install.sh: must run as root" >&2; exit 1; }

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
UNITS=/etc/systemd/system

# 1. The unprivileged account (systemd-sysusers where present, useradd otherwise).
install -D -m 0644 "$HERE/seqae.sysusers" /usr/lib/sysusers.d/seqae.conf
if command -v systemd-sysusers >/dev/null; then
  systemd-sysusers /usr/lib/sysusers.d/seqae.conf
elif ! id seqae >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/seqae --no-create-home --shell /usr/sbin/nologin seqae
fi

# 2. The package in its own virtual environment, owned by root and read-only to the service.
python3 -m venv "$PREFIX/venv"
"$PREFIX/venv/bin/pip" install --upgrade --quiet pip
"$PREFIX/venv/bin/pip" install --quiet "$REPO"

# 3. Configuration: daemon.toml readable by the service, secrets readable by root and seqae only.
install -d -m 0750 -o root -g seqae /etc/seqae
if [ ! -e /etc/seqae/daemon.toml ]; then
  if [ -f "$REPO/configs/daemon.example.toml" ]; then
    install -m 0640 -o root -g seqae "$REPO/configs/daemon.example.toml" /etc/seqae/daemon.toml
  else
    echo "install.sh: write /etc/seqae/daemon.toml (see configs/) before starting seqae" >&2
  fi
fi
[ -e /etc/seqae/seqae.env ] || install -m 0640 -o root -g seqae "$HERE/seqae.env.example" /etc/seqae/seqae.env
[ -e /etc/seqae/retrain.env ] || install -m 0640 -o root -g seqae "$HERE/retrain.env.example" /etc/seqae/retrain.env

# 4. Units. Models and state live in /var/lib/seqae/{models,state} (StateDirectory=).
install -m 0644 "$HERE/seqae.service" "$HERE/seqae-retrain.service" "$HERE/seqae-retrain.timer" "$UNITS/"
if [ "$CUDA" -eq 1 ]; then
  install -D -m 0644 "$HERE/cuda.conf" "$UNITS/seqae.service.d/cuda.conf"
fi
systemctl daemon-reload

if [ "$ENABLE" -eq 1 ]; then
  systemctl enable --now seqae.service
  [ "$TIMER" -eq 1 ] && systemctl enable --now seqae-retrain.timer
else
  echo "Installed. Put the InfluxDB token in /etc/seqae/seqae.env, models in /var/lib/seqae/models, then:"
  echo "  systemctl enable --now seqae.service"
  [ "$TIMER" -eq 1 ] && echo "  systemctl enable --now seqae-retrain.timer"
fi
exit 0
