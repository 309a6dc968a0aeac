#!/usr/bin/env bash
# npm test: every check and every test. Starts its own etcd and Redis on free ports (vitest global
# setup), so it needs only the Debian packages, which it installs when missing and run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

TASKMESH_TEST_DEPS=1 source scripts/ensure-system-deps.sh

echo "== type check"
node_modules/.bin/tsc --noEmit
node_modules/.bin/tsc --noEmit -p ui/tsconfig.json
echo "== build the web dashboard"
node_modules/.bin/tsx scripts/build-ui.ts >/dev/null
echo "== buf lint"
node_modules/.bin/buf lint
echo "== tests"
exec node_modules/.bin/vitest run "$@"
