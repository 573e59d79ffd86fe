/**
 * The agent's list of open flows: an array whose items know their own index, so adding and removing
 * are O(1) (a removed item's place takes the last item).
 *
 * A `Set` does the same job but, churned thousands of times a second, made each flow object survive
 * V8's young-generation collections and be promoted to the old generation (about 1.4 MB per scavenge
 * at 6,000 new connections/s, against 0.4 MB with this list): longer scavenge pauses doubled the p99
 * latency of short connections and cost a fifth of new connections/s. Measured with `--trace-gc`.
 */

/** An item of a SlotList: `slot` is its index there while it is in the list, -1 otherwise. */
export interface Slotted {
  slot: number;
}

export class SlotList<T extends Slotted> {
  readonly #items: T[] = [];

  get size(): number {
    return this.#items.length;
  }

  /** Adds `item` unless it is in the list already. */
  add(item: T): void {
    if (item.slot >= 0 && this.#items[item.slot] === item) return;
    item.slot = this.#items.length;
    this.#items.push(item);
  }

  /** Removes `item`; false when it was not in the list. */
  delete(item: T): boolean {
    const slot = item.slot;
    if (slot < 0 || this.#items[slot] !== item) return false;
    const last = this.#items.pop() as T;
    if (last !== item) {
      this.#items[slot] = last;
      last.slot = slot;
    }
    item.slot = -1;
    return true;
  }

  /** The items, in no particular order; a copy, so the list may change while it is walked. */
  snapshot(): T[] {
    return this.#items.slice();
  }

  /** Walks the items without copying; `visit` must not add or remove any. */
  forEach(visit: (item: T) => void): void {
    for (let i = 0; i < this.#items.length; i++) visit(this.#items[i] as T);
  }
}
