#!/usr/bin/env bash
# Sets up a development/test machine: the system packages the tests use (a real Docker engine,
# busybox-static for the tiny test image, PostgreSQL 15, systemd-analyze) and a virtualenv in
# .venv with gpufleet and its test extras. Idempotent; needs root (or sudo) for apt.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v sqlite3 >/dev/null 2>&1 || need+=(sqlite3)  # the README's backup step (its test runs it)
[ -x /usr/bin/chromium ] || need+=(chromium)  # the console's browser tests (Playwright drives it)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  echo "setup: installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The unprivileged account process-runtime jobs run as (--job-user; deploy/sysusers.d in production).
if ! getent passwd gpufleet-job >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin gpufleet-job
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[test]"
echo "setup: ready (.venv)"
