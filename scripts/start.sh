#!/usr/bin/env bash
# npm start: installs what a fresh clone lacks, then runs the local mesh (scripts/mesh.ts).
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/ensure-system-deps.sh

echo "building the web dashboard..."
node_modules/.bin/tsx scripts/build-ui.ts >/dev/null
exec node_modules/.bin/tsx scripts/mesh.ts "$@"
