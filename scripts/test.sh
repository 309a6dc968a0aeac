#!/usr/bin/env bash
# npm test: every check and every test. Starts its own etcd and Redis on free ports (vitest global
# setup), so it needs only the Debian packages, which it installs when missing and run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if ((${#missing[@]})); then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "tests need: ${missing[*]}. Install them with:"
    echo "  sudo apt-get install -y --no-install-recommends ${missing[*]}"
    exit 1
  fi
fi
[ -x node_modules/.bin/vitest ] || npm ci --no-audit --no-fund

echo "== type check"
node_modules/.bin/tsc --noEmit
echo "== buf lint"
node_modules/.bin/buf lint
echo "== tests"
exec node_modules/.bin/vitest run "$@"
