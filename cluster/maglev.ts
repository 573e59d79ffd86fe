/**
 * Weighted Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
 * Balancer", NSDI 2016, section 3.4). A table of M slots (M prime) maps each slot to a backend; a flow
 * hashes to a slot. Each backend walks its own permutation of the slots, derived from its id alone, and
 * backends take turns claiming their next unclaimed preferred slot, so a change to one backend moves
 * few slots of the others.
 *
 * Weights: the population runs in rounds. In round r a backend of weight w has earned credit
 * r × w / maxWeight and has taken one slot per whole unit of it, so the heaviest backend takes one slot
 * every round and the others proportionally fewer. Within a round backends take their turns in id
 * order. Population stops when the table is full.
 *
 * The table depends only on the set of (id, weight) pairs, never on the order the caller lists them in:
 * backends are processed in id order and the entries hold indexes into the caller's array.
 */

import { heapify, siftDown } from "./index_heap.ts";
import { hashString } from "./hash.ts";

/** The table size Maglev recommends for up to a few hundred backends: a prime well above 100 × N. */
export const DEFAULT_TABLE_SIZE = 65537;

/** The entry of a slot that no backend holds: the table of a service with no backend of weight > 0. */
export const NO_BACKEND = 0xffff;

/** The most backends one table can index: every index below `NO_BACKEND`. */
const MAX_BACKENDS = NO_BACKEND;

/** The largest table size accepted (2^24 slots, 32 MiB); far beyond what a service needs. */
const MAX_TABLE_SIZE = 1 << 24;

/** Seeds of the two hashes that give a backend its permutation; changing them remaps every table. */
const OFFSET_SEED = 0x4d61676c; // "Magl"
const SKIP_SEED = 0x65765370; // "evSp"

/** One backend as the table sees it. */
export interface TableBackend {
  /** The backend's address, such as `10.0.0.11:80`; its permutation is derived from this. */
  readonly id: string;
  /** Relative share of the slots, a finite number ≥ 0; 0 gives the backend no slots. */
  readonly weight: number;
}

export interface TableOptions {
  /** Number of slots, a prime from 2 to 2^24; defaults to `DEFAULT_TABLE_SIZE`. */
  size?: number;
}

/**
 * Builds the lookup table: entry `s` is the index in `backends` of the backend that slot `s` maps to, or
 * `NO_BACKEND` when no backend has weight > 0. Throws a `RangeError` for a size that is not a prime from
 * 2 to 2^24, more than 65535 backends, a duplicate id, or a weight that is not a finite number from 0 to
 * `Number.MAX_SAFE_INTEGER`.
 */
export function buildTable(backends: readonly TableBackend[], options: TableOptions = {}): Uint16Array {
  const permutations = new Permutations(backends.map((backend) => backend.id), options);
  const builder = new TableBuilder(permutations, backends.map((backend) => backend.weight));
  builder.fill(Infinity);
  return builder.table;
}

/**
 * What a table's backends contribute whatever their weights: their canonical order and each one's
 * permutation of the slots (first preferred slot and skip), from their ids alone. Made once for a set of
 * backends, it serves every table built for them. Throws a `RangeError` for a size that is not a prime
 * from 2 to 2^24, more than 65535 backends, or a duplicate id.
 */
export class Permutations {
  readonly size: number;
  readonly ids: readonly string[];
  /** Caller indexes in canonical order: by id, compared by UTF-16 code units, the same on every host. */
  readonly order: Uint16Array;
  /** By caller index: the first preferred slot, and the step to the next. */
  readonly offset: Uint32Array;
  readonly skip: Uint32Array;

  constructor(ids: readonly string[], options: TableOptions = {}) {
    const size = options.size ?? DEFAULT_TABLE_SIZE;
    if (!Number.isInteger(size) || size < 2 || size > MAX_TABLE_SIZE || !isPrime(size)) {
      throw new RangeError(
        `Cannot build a Maglev table of size ${size}: the size must be a prime from 2 to ${MAX_TABLE_SIZE}`,
      );
    }
    if (ids.length > MAX_BACKENDS) {
      throw new RangeError(
        `Cannot build a Maglev table for ${ids.length} backends: at most ${MAX_BACKENDS} fit`,
      );
    }
    const order = ids.map((_, index) => index);
    order.sort((a, b) => {
      const idA = ids[a]!;
      const idB = ids[b]!;
      return idA < idB ? -1 : idA > idB ? 1 : 0;
    });
    for (let i = 1; i < order.length; i++) {
      const id = ids[order[i]!]!;
      if (id === ids[order[i - 1]!]!) {
        throw new RangeError(`Cannot build a Maglev table: backend "${id}" is listed twice`);
      }
    }
    this.size = size;
    this.ids = ids;
    this.order = Uint16Array.from(order);
    this.offset = new Uint32Array(ids.length);
    this.skip = new Uint32Array(ids.length);
    ids.forEach((id, index) => {
      this.offset[index] = hashString(id, OFFSET_SEED) % size;
      this.skip[index] = (hashString(id, SKIP_SEED) % (size - 1)) + 1;
    });
  }
}

/**
 * The same table as `buildTable`, built a share at a time: each `fill(work)` does about that much more of
 * it, so that a caller on an event loop can spread a large table over several turns (one of 65,537 slots
 * takes some milliseconds, most of them for its last slots). `weights` are by caller index, as the ids of
 * `permutations` are; a weight that is not a finite number from 0 to `Number.MAX_SAFE_INTEGER`, or a count
 * that is not the ids', is a `RangeError`.
 */
export class TableBuilder {
  readonly #table: Uint16Array;
  /** Per active backend, in canonical order: its caller index, weight, next preferred slot and skip. */
  readonly #callerIndex: Uint16Array;
  readonly #weight: Float64Array;
  readonly #next: Uint32Array;
  readonly #skip: Uint32Array;
  /** Slots each has taken, and the round in which it takes its next one. */
  readonly #taken: Float64Array;
  readonly #round: Float64Array;
  /** A min-heap of active backends keyed by (round, canonical position). */
  readonly #heap: Uint32Array;
  readonly #maxWeight: number;
  #filled = 0;

  constructor(permutations: Permutations, weights: readonly number[]) {
    if (weights.length !== permutations.ids.length) {
      throw new RangeError(
        `Cannot build a Maglev table from ${weights.length} weights for ${permutations.ids.length} backends`,
      );
    }
    let count = 0;
    let maxWeight = 0;
    for (let index = 0; index < weights.length; index++) {
      const weight = weights[index]!;
      if (!(weight >= 0 && weight <= Number.MAX_SAFE_INTEGER)) {
        throw new RangeError(
          `Cannot build a Maglev table with weight ${weight} for backend "${permutations.ids[index]}": ` +
            `the weight must be a number from 0 to ${Number.MAX_SAFE_INTEGER}`,
        );
      }
      if (weight > 0) count++;
      if (weight > maxWeight) maxWeight = weight;
    }
    const size = permutations.size;
    this.#table = new Uint16Array(size).fill(NO_BACKEND);
    this.#callerIndex = new Uint16Array(count);
    this.#weight = new Float64Array(count);
    this.#next = new Uint32Array(count);
    this.#skip = new Uint32Array(count);
    this.#taken = new Float64Array(count);
    this.#round = new Float64Array(count);
    this.#heap = new Uint32Array(count);
    this.#maxWeight = maxWeight;
    let b = 0;
    for (const index of permutations.order) {
      const weight = weights[index]!;
      if (!(weight > 0)) continue;
      this.#callerIndex[b] = index;
      this.#weight[b] = weight;
      this.#next[b] = permutations.offset[index]!;
      this.#skip[b] = permutations.skip[index]!;
      // The k-th slot (k ≥ 1) of a backend is taken in the first round whose credit reaches k:
      // ceil(k × maxWeight / weight). Exact for integer weights; the heaviest takes slot k in round k.
      this.#round[b] = Math.ceil(maxWeight / weight);
      this.#heap[b] = b;
      b++;
    }
    heapify(this.#heap, this.#round);
    // With no backend of weight > 0 every slot stays NO_BACKEND: the table is complete at once.
    if (count === 0) this.#filled = size;
  }

  /** Whether every slot is filled. */
  get done(): boolean {
    return this.#filled === this.#table.length;
  }

  /** The table: complete once `done`. */
  get table(): Uint16Array {
    return this.#table;
  }

  /**
   * Fills slots until about `work` steps are spent (a slot taken or a taken one passed over: the last slots
   * of a table cost the most, as most of the slots their backends prefer are taken); returns whether the
   * table is complete. A step is a few nanoseconds.
   */
  fill(work: number): boolean {
    const table = this.#table;
    const size = table.length;
    const heap = this.#heap;
    const round = this.#round;
    const next = this.#next;
    const skip = this.#skip;
    const taken = this.#taken;
    const weight = this.#weight;
    const callerIndex = this.#callerIndex;
    const maxWeight = this.#maxWeight;
    let filled = this.#filled;
    let left = work;
    // Backends take turns in (round, canonical position) order, the heap's root first, so very uneven
    // weights cost no more than even ones.
    while (filled < size && left > 0) {
      const b = heap[0]!;
      const step = skip[b]!;
      let slot = next[b]!;
      while (table[slot] !== NO_BACKEND) {
        slot += step;
        if (slot >= size) slot -= size;
        left--;
      }
      table[slot] = callerIndex[b]!;
      filled++;
      left--;
      slot += step;
      next[b] = slot >= size ? slot - size : slot;
      const done = taken[b]! + 1;
      taken[b] = done;
      round[b] = Math.ceil(((done + 1) * maxWeight) / weight[b]!);
      siftDown(heap, round, 0);
    }
    this.#filled = filled;
    return filled === size;
  }
}

/**
 * The distinct backend indexes met walking `table` forward from `slot` (wrapping), in order of first
 * appearance, skipping `NO_BACKEND`; at most `limit` of them, and none past one full lap. The first is
 * the slot's own backend; the rest are the ones to try when it refuses a connection.
 */
export function candidates(table: Uint16Array, slot: number, limit: number): number[] {
  const size = table.length;
  if (!Number.isInteger(limit) || limit < 0) {
    throw new RangeError(`Cannot list candidates up to limit ${limit}: the limit must be an integer ≥ 0`);
  }
  if (size === 0 || limit === 0) return [];
  if (!Number.isInteger(slot) || slot < 0 || slot >= size) {
    throw new RangeError(`Cannot list candidates from slot ${slot}: the table has slots 0 to ${size - 1}`);
  }
  const found: number[] = [];
  let at = slot;
  for (let seen = 0; seen < size; seen++) {
    const index = table[at]!;
    if (index !== NO_BACKEND && !found.includes(index)) {
      found.push(index);
      if (found.length === limit) break;
    }
    at = at + 1 === size ? 0 : at + 1;
  }
  return found;
}

/**
 * How many slots map to a different backend id in `after` than in `before`. `beforeIds[i]` is the id of
 * index `i` in `before`, likewise for `after`; `NO_BACKEND` counts as an id of its own. Throws a
 * `RangeError` if the tables differ in size or an entry has no id.
 */
export function slotsMoved(
  before: Uint16Array,
  beforeIds: readonly string[],
  after: Uint16Array,
  afterIds: readonly string[],
): number {
  if (before.length !== after.length) {
    throw new RangeError(
      `Cannot compare Maglev tables of ${before.length} and ${after.length} slots: the sizes must match`,
    );
  }
  // Give every id one number shared by both tables, then compare numbers slot by slot.
  const numbers = new Map<string, number>();
  const numberOf = (id: string): number => {
    let n = numbers.get(id);
    if (n === undefined) {
      n = numbers.size;
      numbers.set(id, n);
    }
    return n;
  };
  const beforeNumbers = beforeIds.map(numberOf);
  const afterNumbers = afterIds.map(numberOf);
  const idNumber = (numbersOfTable: number[], index: number, slot: number): number => {
    if (index === NO_BACKEND) return -1;
    const n = numbersOfTable[index];
    if (n === undefined) {
      throw new RangeError(
        `Cannot compare Maglev tables: slot ${slot} holds index ${index} but only ${numbersOfTable.length} ids were given`,
      );
    }
    return n;
  };
  let moved = 0;
  for (let slot = 0; slot < before.length; slot++) {
    const a = before[slot]!;
    const b = after[slot]!;
    if (idNumber(beforeNumbers, a, slot) !== idNumber(afterNumbers, b, slot)) moved++;
  }
  return moved;
}

function isPrime(n: number): boolean {
  if (n < 2) return false;
  if (n % 2 === 0) return n === 2;
  for (let d = 3; d * d <= n; d += 2) {
    if (n % d === 0) return false;
  }
  return true;
}
