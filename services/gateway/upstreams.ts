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
