import * as http from "node:http";
import { afterEach, describe, expect, it } from "vitest";
import { silentLogger } from "../../lib/logger.js";
import { createRegistry } from "../../lib/metrics.js";
import { startServer, type RpcServer } from "../../lib/server.js";

/** One GET on `agent`; resolves with whether it went over a reused connection. */
function get(port: number, agent: http.Agent): Promise<{ reused: boolean; keepAlive: string | undefined; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: "127.0.0.1", port, path: "/ping", agent }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => (body += c));
      res.on("end", () => resolve({ reused: req.reusedSocket, keepAlive: res.headers["keep-alive"] as string | undefined, body }));
    });
    req.on("error", reject);
  });
}

describe("HTTP/1.1 keep-alive on the shared port", () => {
  let server: RpcServer | undefined;
  afterEach(async () => {
    await server?.close();
    server = undefined;
  });

  it("keeps an idle connection open longer than clients do (Node's agent: 5 s), so a reused one is never closed under a request", async () => {
    server = await startServer({
      name: "ka",
      port: 0,
      routes: () => undefined,
      files: [],
      registry: createRegistry("ka"),
      logger: silentLogger(),
      httpFallback: (_req, res) => {
        (res as http.ServerResponse).writeHead(200, { "content-type": "text/plain" });
        res.end("pong");
        return true;
      },
    });
    // An agent that keeps idle sockets for as long as the server does (Node 20's global agent
    // drops them after 5 s, exactly when a server with Node's default would close them too).
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const first = await get(server.port, agent);
      expect(first.body).toBe("pong");
      expect(first.keepAlive).toBe("timeout=65");
      // Idle past Node's default keepAliveTimeout (5 s): the connection is still there and reused.
      await new Promise((r) => setTimeout(r, 5300));
      const second = await get(server.port, agent);
      expect(second.body).toBe("pong");
      expect(second.reused).toBe(true);
    } finally {
      agent.destroy();
    }
  });
});
