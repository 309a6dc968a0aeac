import type { DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type { ServiceRecord } from "../../lib/keys.js";
import type { Membership } from "../../lib/membership.js";

/**
 * Clients for the replicas of one internal service, discovered through a Membership of
 * `/taskmesh/services/<name>/`: round-robin over the live instances, one HTTP/2 transport per
 * address, reused. No instance → UNAVAILABLE at once rather than a hang.
 */
export class Upstreams<S extends DescService> {
  private readonly clients = new Map<string, Client<S>>();
  private cursor = 0;

  constructor(
    private readonly service: S,
    private readonly name: string,
    private readonly members: Membership<ServiceRecord>,
    private readonly transport: (address: string) => Transport = (address) =>
      createGrpcTransport({ baseUrl: `http://${address}` }),
  ) {
    members.on("delete", (_id: string, r: ServiceRecord) => this.clients.delete(r.address));
  }

  /** How many instances are known. */
  get size(): number {
    return this.members.snapshot().size;
  }

  /**
   * Runs `fn` on the next instance; for calls without side effects, an UNAVAILABLE answer (the
   * instance is gone or unreachable) moves on to the next instance, once per known instance.
   */
  async call<T>(fn: (client: Client<S>) => Promise<T>, idempotent: boolean): Promise<T> {
    const tries = idempotent ? Math.max(1, this.size) : 1;
    for (let i = 1; ; i++) {
      try {
        return await fn(this.pick());
      } catch (err) {
        if (i >= tries || !(err instanceof ConnectError) || err.code !== Code.Unavailable) throw err;
      }
    }
  }

  /** A client for the next live instance. */
  pick(): Client<S> {
    const all = [...this.members.snapshot().values()];
    if (all.length === 0) throw new ConnectError(`no ${this.name} instance is available`, Code.Unavailable);
    const r = all[this.cursor++ % all.length] as ServiceRecord;
    let c = this.clients.get(r.address);
    if (c === undefined) {
      c = createClient(this.service, this.transport(r.address));
      this.clients.set(r.address, c);
    }
    return c;
  }
}
