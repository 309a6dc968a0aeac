#!/bin/sh
# Entry point of the taskmesh image: runs one service, chosen by the first argument or by
# TASKMESH_SERVICE; the remaining arguments are that service's flags.
#   docker run taskmesh worker --slots 4
#   docker run -e TASKMESH_SERVICE=scheduler taskmesh
#   docker run -v tls:/app/.taskmesh/tls taskmesh certs --dir /app/.taskmesh/tls scheduler/s1@s1 …
# `exec` makes node PID 1, so SIGTERM from `docker stop` reaches the service's shutdown handler.
set -eu
if [ "${1:-}" = certs ]; then
  shift
  exec node --import tsx /app/scripts/certs.ts "$@"
fi
case "${1:-}" in
  gateway | scheduler | worker | config)
    service="$1"
    shift
    ;;
  *) service="${TASKMESH_SERVICE:-}" ;;
esac
case "$service" in
  gateway | scheduler | worker | config) ;;
  *)
    echo "usage: <image> gateway|scheduler|worker|config [flags...]  (or set TASKMESH_SERVICE), or <image> certs --dir <dir> <role>/<name>[@host]..." >&2
    exit 64
    ;;
esac
# --max-semi-space-size: lib/node-flags.ts (SERVICE_NODE_FLAGS) says why; keep the two in step.
exec node --max-semi-space-size=64 --import tsx "/app/services/$service/main.ts" "$@"
