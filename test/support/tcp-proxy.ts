import { createConnection, createServer, type Server, type Socket } from "node:net";

/** A TCP proxy a test can cut: what one process sees as its link to a backend. */
export interface TcpProxy {
  /** `127.0.0.1:port` to give the process instead of the backend's address. */
  readonly address: string;
  /**
   * Stops forwarding in both directions without closing anything, like a network that drops
   * every packet: connections stay open and silent, new ones are accepted and hang.
   */
  blackhole(): void;
  /**
   * Stops listening and drops every connection: the process sees refused connections (the
   * kernel answers a connect to a port nobody listens on with a reset), as from a host whose
   * firewall rejects it.
   */
  refuse(): Promise<void>;
  /** Forwards again, including what was held back, and listens again after refuse(). */
  heal(): Promise<void>;
  close(): Promise<void>;
}

interface Pair {
  client: Socket;
  upstream: Socket;
  /** Data read while cut, to deliver on heal. */
  held: { to: Socket; chunk: Buffer }[];
}

/** Starts a proxy on a free loopback port forwarding to `target` (`host:port`). */
export async function startTcpProxy(target: string): Promise<TcpProxy> {
  const [host, portText] = [target.slice(0, target.lastIndexOf(":")), target.slice(target.lastIndexOf(":") + 1)];
  const pairs = new Set<Pair>();
  let cut = false;
  const server: Server = createServer((client) => {
    const upstream = createConnection({ host, port: Number(portText) });
    const pair: Pair = { client, upstream, held: [] };
    pairs.add(pair);
    // Read everything, forward it unless cut; while cut, hold it (the peers hear nothing).
    const forward = (to: Socket) => (chunk: Buffer) => {
      if (cut) pair.held.push({ to, chunk });
      else to.write(chunk);
    };
    client.on("data", forward(upstream));
    upstream.on("data", forward(client));
    const end = (): void => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("error", end);
    upstream.on("error", end);
    client.on("close", end);
    upstream.on("close", end);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const addr = server.address();
  if (addr === null || typeof addr === "string") throw new Error("proxy bound to no port");
  const port = addr.port;
  let listening = true;
  return {
    address: `127.0.0.1:${port}`,
    blackhole() {
      cut = true;
    },
    async refuse() {
      if (!listening) return;
      listening = false;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const p of pairs) {
        p.client.destroy();
        p.upstream.destroy();
      }
      pairs.clear();
      await closed;
    },
    async heal() {
      cut = false;
      for (const p of pairs) for (const { to, chunk } of p.held.splice(0)) to.write(chunk);
      if (!listening) {
        listening = true;
        await new Promise<void>((resolve, reject) => {
          server.once("error", reject);
          server.listen(port, "127.0.0.1", () => {
            server.off("error", reject);
            resolve();
          });
        });
      }
    },
    async close() {
      for (const p of pairs) {
        p.client.destroy();
        p.upstream.destroy();
      }
      pairs.clear();
      if (listening) await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
