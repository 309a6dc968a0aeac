import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import type { Logger } from "pino";

const SERVER_FAULTS = new Set([Code.Internal, Code.Unknown, Code.DataLoss]);

/**
 * Logs one finished call: a debug line with method, code and milliseconds; server faults
 * (INTERNAL, UNKNOWN, DATA_LOSS) at error level with their cause. `log` is the `rpc` component.
 */
export function logRpc(log: Logger, method: string, startedMs: number, err: unknown, extra: Record<string, unknown> = {}): void {
  const ms = Math.round((performance.now() - startedMs) * 10) / 10;
  if (err === undefined) {
    if (log.isLevelEnabled("debug")) log.debug({ method, code: "OK", ms, ...extra }, "rpc");
    return;
  }
  const e = ConnectError.from(err);
  const fields = { method, code: Code[e.code], ms, ...extra };
  if (SERVER_FAULTS.has(e.code)) log.error({ ...fields, err: e.cause ?? e }, "rpc failed");
  else if (log.isLevelEnabled("debug")) log.debug({ ...fields, message: e.rawMessage }, "rpc");
}

/** The child logger {@link logRpc} writes through. */
export function rpcLogger(logger: Logger): Logger {
  return logger.child({ component: "rpc" });
}

/**
 * Logs every RPC a server handles (see {@link logRpc}). For streams the line is written when the
 * handler returns the stream (its end is counted by the metrics interceptor).
 */
export function rpcLogInterceptor(logger: Logger): Interceptor {
  const log = rpcLogger(logger);
  return (next) => async (req) => {
    const started = performance.now();
    const method = `${req.method.parent.typeName}/${req.method.name}`;
    try {
      const res = await next(req);
      logRpc(log, method, started, undefined, { stream: res.stream });
      return res;
    } catch (err) {
      logRpc(log, method, started, err);
      throw err;
    }
  };
}
