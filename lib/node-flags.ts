/**
 * Node flags every taskmesh service runs with (the launchers in scripts/mesh.ts,
 * test/support/mesh.ts and deploy/docker/entrypoint.sh pass them).
 *
 * `--max-semi-space-size=64`: V8's young generation up to 64 MiB a half. The hot paths allocate a
 * lot of short-lived objects (decoded requests, tasks, stream messages); with the default 16 MiB
 * the scheduler spent about a quarter of its CPU in scavenges during batched submits. Measured
 * side by side (bench/out/batch.mts): scheduler 25 → 19–20 CPU ms per 1,000 tasks, batched
 * enqueue 33k → 36–38k tasks/s. It costs up to ~100 MiB more resident memory per process at peak.
 */
export const SERVICE_NODE_FLAGS: readonly string[] = ["--max-semi-space-size=64"];
