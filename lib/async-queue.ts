/**
 * An unbounded single-consumer async queue: producers `push`, one consumer iterates. Used as the
 * request side of client streams and the response side of server streams, so that reading and
 * writing a bidi stream are independent.
 */
export class AsyncQueue<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private head = 0;
  private waiter: (() => void) | undefined;
  private ended = false;
  private failure: unknown;

  /** Adds an item; ignored after `end()`. */
  push(item: T): void {
    if (this.ended) return;
    this.items.push(item);
    this.notify();
  }

  /** Ends the stream after the queued items; with an error, the consumer throws it instead. */
  end(error?: unknown): void {
    if (this.ended) return;
    this.ended = true;
    this.failure = error;
    this.notify();
  }

  /** Items waiting to be consumed. */
  get size(): number {
    return this.items.length - this.head;
  }

  /** True once `end()` was called. */
  get closed(): boolean {
    return this.ended;
  }

  private notify(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      if (this.ended && this.failure !== undefined) throw this.failure;
      if (this.head < this.items.length) {
        const item = this.items[this.head] as T;
        this.head++;
        if (this.head > 1024 && this.head * 2 > this.items.length) {
          this.items = this.items.slice(this.head);
          this.head = 0;
        }
        yield item;
        continue;
      }
      if (this.ended) return;
      await new Promise<void>((resolve) => {
        this.waiter = resolve;
      });
    }
  }
}
