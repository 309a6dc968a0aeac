#!/usr/bin/env bash
# Sourced by start.sh and test.sh: installs the Debian packages taskmesh runs on (etcd, Redis)
# when they are missing and we are root; otherwise prints the command to run and fails.
missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
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
