import os from "node:os";
import type { JsonObject, TaskHandler } from "../task-api.js";

/**
 * `health_check` `{}` → the worker's own vital signs: `cpu` (process CPU time in seconds, `user`
 * and `system`, plus the machine's core `count`), `memory` (bytes: process `rss` and `heapUsed`,
 * machine `total` and `free`), `load_average` (1, 5, 15 minutes), `slots`, `slots_used`,
 * `hostname`, `pid`, `uptime_s` (process).
 */
export function healthCheck(slots: () => { slots: number; used: number }): TaskHandler {
  return async (): Promise<JsonObject> => {
    const cpu = process.cpuUsage();
    const mem = process.memoryUsage();
    const s = slots();
    return {
      cpu: { user: cpu.user / 1e6, system: cpu.system / 1e6, count: os.availableParallelism() },
      memory: { rss: mem.rss, heapUsed: mem.heapUsed, total: os.totalmem(), free: os.freemem() },
      load_average: os.loadavg(),
      slots: s.slots,
      slots_used: s.used,
      hostname: os.hostname(),
      pid: process.pid,
      uptime_s: process.uptime(),
    };
  };
}
