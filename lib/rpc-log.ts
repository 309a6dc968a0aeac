import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import type { Logger } from "pino";

const SERVER_FAULTS = new Set([Code.Internal, Code.Unknown, Code.DataLoss]);

/**
 * Logs every RPC a server handles: one debug line per call with method, code and milliseconds;
 * server faults (INTERNAL, UNKNOWN, DATA_LOSS) at error level. For streams the line is written
 * when the handler returns the stream (its end is counted by the metrics interceptor).
 */
export function rpcLogInterceptor(logger: Logger): Interceptor {
  const log = logger.child({ component: "rpc" });
  return (next) => async (req) => {
    const started = performance.now();
    const method = `${req.method.parent.typeName}/${req.method.name}`;
    try {
      const res = await next(req);
      if (log.isLevelEnabled("debug")) {
        log.debug({ method, code: "OK", ms: Math.round((performance.now() - started) * 10) / 10, stream: res.stream }, "rpc");
      }
      return res;
    } catch (err) {
      const e = ConnectError.from(err);
      const fields = { method, code: Code[e.code], ms: Math.round((performance.now() - started) * 10) / 10 };
      if (SERVER_FAULTS.has(e.code)) log.error({ ...fields, err: e.cause ?? e }, "rpc failed");
      else log.debug({ ...fields, message: e.rawMessage }, "rpc");
      throw err;
    }
  };
}
