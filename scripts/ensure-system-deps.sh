#!/usr/bin/env bash
# Sourced by start.sh and test.sh: installs the Debian packages taskmesh needs when they are
# missing and we are root; otherwise prints the command to run and fails. The mesh needs etcd and
# Redis; with TASKMESH_TEST_DEPS=1 (npm test) also promtool, docker-compose (validation only),
# Chromium (the dashboard's browser test), and ip and iptables-legacy (the multi-host fault test's
# network namespaces and faults).
missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$2"); }
need etcd etcd-server
need etcdctl etcd-client
need redis-server redis-server
if [ "${TASKMESH_TEST_DEPS:-0}" = "1" ]; then
  need redis-benchmark redis-tools
  need promtool prometheus
  need docker-compose docker-compose
  need chromium chromium
  need ip iproute2
  need iptables-legacy iptables
fi
if ((${#missing[@]})); then
  if [ "$(id -u)" -eq 0 ]; then
    echo "installing ${missing[*]} (Debian packages)..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "taskmesh needs: ${missing[*]}. Install them with:"
    echo "  sudo apt-get install -y --no-install-recommends ${missing[*]}"
    exit 1
  fi
fi
if [ ! -x node_modules/.bin/tsx ] || [ ! -x node_modules/.bin/vitest ]; then
  echo "installing npm dependencies..."
  npm ci --no-audit --no-fund
fi
