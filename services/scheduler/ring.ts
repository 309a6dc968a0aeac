/**
 * The worker ring: consistent hashing with virtual nodes over worker ids, aware of task types,
 * with bounded loads (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with Bounded Loads",
 * SODA 2018). Pure logic, no I/O: the dispatcher asks it which worker should run a task, keyed by
 * the task's affinity key (its id when it has none).
 */

/** A member of the ring as callers describe it. */
export interface RingMember {
  /** Worker id (the key suffix under `/taskmesh/workers/`). */
  id: string;
  /** Task types the worker runs; a key is never placed on a member lacking its type. */
  taskTypes: ReadonlySet<string>;
}

/** Options for {@link Ring}. */
export interface RingOptions {
  /**
   * Virtual nodes (points on the circle) per member. More points even out the share of keys each
   * member owns: its relative spread is about `sqrt(1/vnodes)`, 7.9 % at 160, 2.2 % at 2048.
   * 2048 keeps every member of a 10-member ring within ±10 % of its fair share (4.5 σ) for any
   * member ids; at 160 most 10-member rings have a member off by more than 10 %. Memory is
   * 8 bytes per point (16 KiB per member), and lookups are a binary search either way.
   * @default 2048
   */
  vnodes?: number;
  /**
   * Load bound ε of {@link Ring.pick}: a member whose load would go above
   * `ceil((1 + ε) · average)` passes the task clockwise.
   * @default 0.25
   */
  epsilon?: number;
}

/**
 * 32-bit MurmurHash3 (x86_32) over the UTF-16 code units of `s`, two units per 32-bit block.
 * Its values differ from murmur3 over the UTF-8 bytes, but it mixes as well, is the same in
 * every process and allocates nothing (no encoding to bytes). Measured spread of ring shares
 * matches the `sqrt(1/vnodes)` of an ideal random hash.
 */
export function hash32(s: string, seed = 0): number {
  let h = seed >>> 0;
  const n = s.length;
  const even = n & ~1;
  let i = 0;
  for (; i < even; i += 2) {
    let k = (s.charCodeAt(i) | (s.charCodeAt(i + 1) << 16)) >>> 0;
    k = Math.imul(k, 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, 0x1b873593);
    h ^= k;
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  }
  if (i < n) {
    let k = s.charCodeAt(i);
    k = Math.imul(k, 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, 0x1b873593);
    h ^= k;
  }
  h ^= n * 2; // length in bytes, as murmur3 does
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Points of the ring (or of the part of it whose members run one task type), sorted. */
interface Circle {
  /** Point positions, ascending; equal positions ordered by member id. */
  hashes: Uint32Array;
  /** Member slot owning each point. */
  slots: Int32Array;
  /** Distinct member slots on this circle. */
  members: Int32Array;
}

const EMPTY_CIRCLE: Circle = {
  hashes: new Uint32Array(0),
  slots: new Int32Array(0),
  members: new Int32Array(0),
};

/** 2^20: packs (hash, rank) into one exactly representable double, for a numeric sort. */
const RANK_SPACE = 1 << 20;

/** Index of the first point at or after `h`, wrapping to 0 past the end. */
function firstAtOrAfter(hashes: Uint32Array, h: number): number {
  let lo = 0;
  let hi = hashes.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if ((hashes[mid] as number) < h) lo = mid + 1;
    else hi = mid;
  }
  return lo === hashes.length ? 0 : lo;
}

/**
 * A consistent-hash ring with virtual nodes over member ids.
 *
 * - Each member owns `vnodes` points at `hash32(id, i)`; a key belongs to the first point at or
 *   clockwise after `hash32(key)` whose member runs the key's task type. Points that collide are
 *   ordered by member id, so the same members give the same owners whatever the insertion order.
 * - Adding a member moves only the keys it takes over (about `1/(n+1)` of them); removing one
 *   moves only its own keys.
 * - Lookups hash the key once and binary-search a sorted typed array; they allocate nothing.
 *   Members' points are kept per task type (built lazily, dropped on change), so skipping members
 *   that lack the type costs nothing at lookup time.
 * - Changes are applied lazily, at the next lookup, in one pass: adding n members at start-up
 *   costs one sort, and a later single change costs one linear merge.
 */
export class Ring {
  private readonly vnodes: number;
  private readonly epsilon: number;

  /** Member id by slot; `undefined` marks a free slot. */
  private readonly ids: (string | undefined)[] = [];
  private readonly types: (ReadonlySet<string> | undefined)[] = [];
  private readonly slotOf = new Map<string, number>();
  private readonly freeSlots: number[] = [];

  /** Every member's points, as of the last rebuild. */
  private all: Circle = EMPTY_CIRCLE;
  /** Slots added since the last rebuild (their points are not in `all` yet). */
  private readonly added = new Set<number>();
  /** Slots removed since the last rebuild (their points are still in `all`). */
  private readonly removed = new Set<number>();
  /** Per-task-type circles, built on first use after each membership change. */
  private readonly byType = new Map<string, Circle>();

  /** Per-slot stamp marking members already considered by the current {@link pick} walk. */
  private seen = new Uint32Array(16);
  private stamp = 0;

  /** Creates an empty ring. */
  constructor(opts: RingOptions = {}) {
    const vnodes = opts.vnodes ?? 2048;
    const epsilon = opts.epsilon ?? 0.25;
    if (!Number.isInteger(vnodes) || vnodes < 1) {
      throw new RangeError(`vnodes must be a positive integer, got ${vnodes}`);
    }
    if (!(epsilon > 0) || !Number.isFinite(epsilon)) {
      throw new RangeError(`epsilon must be a positive number, got ${epsilon}`);
    }
    this.vnodes = vnodes;
    this.epsilon = epsilon;
  }

  /** Number of members. */
  get size(): number {
    return this.slotOf.size;
  }

  /** Whether `id` is a member. */
  has(id: string): boolean {
    return this.slotOf.has(id);
  }

  /** Member ids, in no particular order. */
  members(): IterableIterator<string> {
    return this.slotOf.keys();
  }

  /** Task types of member `id`, or `undefined` when it is not a member. */
  taskTypes(id: string): ReadonlySet<string> | undefined {
    const slot = this.slotOf.get(id);
    return slot === undefined ? undefined : this.types[slot];
  }

  /**
   * Adds member `id` running `taskTypes`. Adding an existing member replaces its task types;
   * its points do not move, so keys change owner only where the types changed.
   */
  add(id: string, taskTypes: Iterable<string>): void {
    const types = new Set(taskTypes);
    this.byType.clear();
    const existing = this.slotOf.get(id);
    if (existing !== undefined) {
      this.types[existing] = types;
      return;
    }
    if (this.slotOf.size + this.removed.size >= RANK_SPACE) {
      throw new RangeError(`a ring holds at most ${RANK_SPACE} members`);
    }
    // A slot freed since the last rebuild still has points in `all`: do not reuse it yet.
    let slot: number | undefined;
    for (let k = this.freeSlots.length - 1; k >= 0 && slot === undefined; k--) {
      const free = this.freeSlots[k] as number;
      if (!this.removed.has(free)) {
        slot = free;
        this.freeSlots.splice(k, 1);
      }
    }
    slot ??= this.ids.length;
    this.ids[slot] = id;
    this.types[slot] = types;
    this.slotOf.set(id, slot);
    this.added.add(slot);
    if (this.seen.length <= slot) {
      const seen = new Uint32Array(Math.max(16, (slot + 1) * 2));
      seen.set(this.seen);
      this.seen = seen;
    }
  }

  /** Removes member `id`; a no-op when it is not a member. */
  remove(id: string): void {
    const slot = this.slotOf.get(id);
    if (slot === undefined) return;
    this.byType.clear();
    this.slotOf.delete(id);
    this.ids[slot] = undefined;
    this.types[slot] = undefined;
    this.freeSlots.push(slot);
    if (!this.added.delete(slot)) this.removed.add(slot);
  }

  /**
   * Plain consistent-hash lookup: the owner of `key` among members that run `taskType`, with no
   * load bound. `undefined` when no member runs the type.
   */
  owner(key: string, taskType: string): string | undefined {
    const c = this.circle(taskType);
    if (c.hashes.length === 0) return undefined;
    return this.ids[c.slots[firstAtOrAfter(c.hashes, hash32(key))] as number];
  }

  /**
   * Bounded-load pick (Mirrokni et al.). Walks clockwise from `hash32(key)` over the points of
   * members that run `taskType` and returns the first member that
   * - stays within the bound after taking the task: `load(id) + 1 <= ceil((1 + ε) · average)`,
   *   where `average = (L + 1) / n`, `n` is the number of members that run `taskType` (full ones
   *   included) and `L` the sum of `load()` over them: the average load once this task is
   *   placed, as in the paper; and
   * - can take a task now: `canAccept(id)` (it has a free slot).
   *
   * With ε > 0 the least-loaded member always satisfies the bound, so the result is `undefined`
   * only when no member runs the type or no member within the bound can accept. Each member is
   * considered at most once (after `load` has been called once per member for the sum); when
   * every member is full the walk goes round the whole circle, so callers should not pick while
   * no worker has a free slot. Allocation-free.
   */
  pick(
    key: string,
    taskType: string,
    load: (id: string) => number,
    canAccept: (id: string) => boolean,
  ): string | undefined {
    const c = this.circle(taskType);
    const n = c.members.length;
    if (n === 0) return undefined;
    let total = 0;
    for (let m = 0; m < n; m++) total += load(this.ids[c.members[m] as number] as string);
    const cap = Math.ceil(((1 + this.epsilon) * (total + 1)) / n);

    const stamp = this.nextStamp();
    const seen = this.seen;
    const { hashes, slots } = c;
    const points = hashes.length;
    let i = firstAtOrAfter(hashes, hash32(key));
    let considered = 0;
    for (let step = 0; step < points && considered < n; step++) {
      const slot = slots[i] as number;
      i = i + 1 === points ? 0 : i + 1;
      if (seen[slot] === stamp) continue;
      seen[slot] = stamp;
      considered++;
      const id = this.ids[slot] as string;
      if (load(id) + 1 <= cap && canAccept(id)) return id;
    }
    return undefined;
  }

  private nextStamp(): number {
    this.stamp = (this.stamp + 1) >>> 0;
    if (this.stamp === 0) {
      this.seen.fill(0);
      this.stamp = 1;
    }
    return this.stamp;
  }

  /** The circle of members running `taskType`: the full one when every member runs it. */
  private circle(taskType: string): Circle {
    const cached = this.byType.get(taskType);
    if (cached !== undefined) return cached;
    if (this.added.size > 0 || this.removed.size > 0) this.rebuild();
    let running = 0;
    for (const slot of this.slotOf.values()) if (this.types[slot]?.has(taskType) === true) running++;
    const c =
      running === this.slotOf.size
        ? this.all
        : running === 0
          ? EMPTY_CIRCLE
          : this.filter(this.all, (s) => this.types[s]?.has(taskType) === true);
    // Task types come from requests: bound the cache rather than trust them.
    if (this.byType.size >= 1024) this.byType.clear();
    this.byType.set(taskType, c);
    return c;
  }

  /** Applies pending changes to `all`: drops removed points, merges in the added ones. */
  private rebuild(): void {
    let base = this.all;
    if (this.removed.size > 0) {
      const removed = this.removed;
      base = this.filter(base, (s) => !removed.has(s));
      removed.clear();
    }
    if (this.added.size > 0) {
      // Sort the new points with one numeric sort: (hash, rank of id among the new members).
      const newSlots = [...this.added].sort((a, b) => {
        const x = this.ids[a] as string;
        const y = this.ids[b] as string;
        return x < y ? -1 : x > y ? 1 : 0;
      });
      const packed = new Float64Array(newSlots.length * this.vnodes);
      let p = 0;
      for (let rank = 0; rank < newSlots.length; rank++) {
        const id = this.ids[newSlots[rank] as number] as string;
        for (let v = 0; v < this.vnodes; v++) packed[p++] = hash32(id, v) * RANK_SPACE + rank;
      }
      packed.sort();
      this.added.clear();

      const oldH = base.hashes;
      const oldS = base.slots;
      const total = oldH.length + packed.length;
      const hashes = new Uint32Array(total);
      const slots = new Int32Array(total);
      let a = 0;
      let b = 0;
      for (let k = 0; k < total; k++) {
        let takeOld: boolean;
        if (a >= oldH.length) takeOld = false;
        else if (b >= packed.length) takeOld = true;
        else {
          const hb = Math.floor((packed[b] as number) / RANK_SPACE);
          const ha = oldH[a] as number;
          if (ha !== hb) takeOld = ha < hb;
          else {
            const slotB = newSlots[(packed[b] as number) % RANK_SPACE] as number;
            takeOld = (this.ids[oldS[a] as number] as string) < (this.ids[slotB] as string);
          }
        }
        if (takeOld) {
          hashes[k] = oldH[a] as number;
          slots[k] = oldS[a] as number;
          a++;
        } else {
          const v = packed[b] as number;
          hashes[k] = Math.floor(v / RANK_SPACE);
          slots[k] = newSlots[v % RANK_SPACE] as number;
          b++;
        }
      }
      base = { hashes, slots, members: Int32Array.from(this.slotOf.values()) };
    }
    this.all = base;
  }

  /** The points of `c` whose member slot passes `keep`. */
  private filter(c: Circle, keep: (slot: number) => boolean): Circle {
    let count = 0;
    for (let k = 0; k < c.slots.length; k++) if (keep(c.slots[k] as number)) count++;
    const hashes = new Uint32Array(count);
    const slots = new Int32Array(count);
    let j = 0;
    for (let k = 0; k < c.slots.length; k++) {
      const s = c.slots[k] as number;
      if (!keep(s)) continue;
      hashes[j] = c.hashes[k] as number;
      slots[j] = s;
      j++;
    }
    const members: number[] = [];
    for (let k = 0; k < c.members.length; k++) {
      const s = c.members[k] as number;
      if (keep(s)) members.push(s);
    }
    return { hashes, slots, members: Int32Array.from(members) };
  }
}
