import { EventEmitter } from "node:events";
import type { Campaign, Etcd3 } from "etcd3";
import type { Logger } from "pino";
import { delay } from "../../lib/lifecycle.js";

/** Options for {@link Leadership}. */
export interface LeadershipOptions {
  client: Etcd3;
  /** etcd key root, e.g. "/taskmesh/"; the election lives at `<root>election/scheduler/`. */
  root: string;
  /** Lease TTL of the campaign in seconds. @default 3 */
  ttlSeconds?: number;
  logger: Logger;
}

/**
 * Campaigns for scheduler leadership in an etcd election. Emits "elected"(epoch) when this
 * replica leads and "lost" when it stops leading; after losing it campaigns again. The epoch is
 * the create revision of the campaign key: it only grows, so workers can obey the newest leader.
 */
export class Leadership extends EventEmitter<{ elected: [bigint]; lost: [] }> {
  private campaign: Campaign | undefined;
  private closed = false;
  private leading = false;
  private currentEpoch = 0n;
  private value = "";
  private readonly log: Logger;

  constructor(private readonly opts: LeadershipOptions) {
    super();
    this.log = opts.logger.child({ component: "leadership" });
  }

  /** True while this replica is the leader. */
  get isLeader(): boolean {
    return this.leading;
  }

  /** The epoch of the current leadership (0 when not leading). */
  get epoch(): bigint {
    return this.leading ? this.currentEpoch : 0n;
  }

  /** Starts campaigning with `value` (this replica's address) as what it announces; does not wait. */
  start(value: string): void {
    this.value = value;
    void this.run();
  }

  /** The current leader's announced value (address), or undefined. */
  async leader(): Promise<string | undefined> {
    return this.election().leader();
  }

  private election() {
    return this.opts.client.namespace(this.opts.root).election("scheduler", this.opts.ttlSeconds ?? 3);
  }

  private async run(): Promise<void> {
    let backoff = 200;
    while (!this.closed) {
      try {
        const campaign = this.election().campaign(this.value);
        this.campaign = campaign;
        campaign.on("error", () => undefined); // every error is handled below; never unhandled
        const lost = new Promise<void>((resolve) => {
          campaign.once("error", (err: Error) => {
            this.log.warn({ err }, "campaign failed");
            resolve();
          });
        });
        const outcome = await Promise.race([
          campaign.wait().then(() => "elected" as const),
          lost.then(() => "lost" as const),
        ]);
        if (this.closed) return;
        if (outcome === "elected") {
          const key = await campaign.getCampaignKey();
          const kv = await this.opts.client.get(key).exec();
          const rev = kv.kvs[0]?.create_revision;
          if (rev === undefined) throw new Error("campaign key vanished");
          this.currentEpoch = BigInt(rev);
          this.leading = true;
          backoff = 200;
          this.log.info({ epoch: String(this.currentEpoch) }, "elected leader");
          this.emit("elected", this.currentEpoch);
          await lost;
          this.leading = false;
          if (!this.closed) {
            this.log.warn("lost leadership");
            this.emit("lost");
          }
        }
      } catch (err) {
        if (this.closed) return;
        if (this.leading) {
          this.leading = false;
          this.emit("lost");
        }
        this.log.warn({ err }, "campaign error, retrying");
      }
      await delay(backoff);
      backoff = Math.min(backoff * 2, 5000);
    }
  }

  /** Resigns (so another replica takes over at once) and stops campaigning. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const wasLeader = this.leading;
    this.leading = false;
    try {
      await this.campaign?.resign();
    } catch (err) {
      this.log.warn({ err }, "resign failed");
    }
    if (wasLeader) this.emit("lost");
  }
}
