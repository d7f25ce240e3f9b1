#!/usr/bin/env bash
# Install the PostgreSQL server (Debian package) that tests/store/pg_server.py starts on a loopback port.
# Idempotent: does nothing when the binaries are already there. Needs root (or sudo) to install.
set -euo pipefail
if command -v pg_ctl >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq postgresql >/dev/null
ls /usr/lib/postgresql/*/bin/pg_ctl
