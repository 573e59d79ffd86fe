/**
 * Changes to the cluster state as the manager sends them once an agent has a whole state: for each service
 * that changed, the backends whose weight or state changed and the slots its table moved (or the whole
 * table, when that is shorter), with a hash of the table that results. The manager makes them from two
 * tables it built; an agent applies them to the version it has, and only to that one. Pure: no I/O.
 *
 * Invariant: applying the deltas of versions a → b → c to the state of version a gives, slot for slot, the
 * tables of version c; a delta that does not apply (another base or epoch, a service or backend the agent
 * does not have, a slot out of range, a hash that differs) changes nothing and is a `DeltaError`, after which
 * the agent asks for the whole state.
 */
import { hash32 } from "./hash.ts";
import {
  type BackendChange,
  type ClusterState,
  decodeBase64,
  decodeTable,
  encodeBase64,
  encodeTable,
  ProtocolError,
  type ServiceDelta,
  type ServiceSpec,
  type StateDelta,
  tableBytes,
} from "./protocol.ts";

/** The bytes of one moved slot on the wire: the slot (uint32) and its entry (uint16), little-endian. */
const SLOT_RECORD_BYTES = 6;

/** The entry of a slot that no backend holds (as in `maglev.ts`). */
const NO_BACKEND = 0xffff;

/** A delta an agent cannot apply to the state it has; it asks the manager for the whole state instead. */
export class DeltaError extends Error {
  override readonly name = "DeltaError";
}

/** The slots whose entries differ between two tables of the same size and backends, ascending. */
export function movedSlots(before: Uint16Array, after: Uint16Array): Uint32Array {
  if (before.length !== after.length) {
    throw new RangeError(
      `Cannot compare Maglev tables of ${before.length} and ${after.length} slots: the sizes must match`,
    );
  }
  let count = 0;
  for (let slot = 0; slot < after.length; slot++) if (before[slot] !== after[slot]) count++;
  const moved = new Uint32Array(count);
  let at = 0;
  for (let slot = 0; slot < after.length; slot++) if (before[slot] !== after[slot]) moved[at++] = slot;
  return moved;
}

/** MurmurHash3 of a table's little-endian entries: what a delta's `hash` says of the table it leads to. */
export function tableHash(table: Uint16Array): number {
  return hash32(tableBytes(table));
}

/**
 * One service's delta: `after` is its new table, `moved` the slots that changed since the table the agent
 * has (`movedSlots`), `backends` the backends whose weight or state changed. The moved slots are sent when
 * they take fewer bytes than the whole table, else the whole table.
 */
export function serviceDelta(
  name: string,
  change: { readonly after: Uint16Array; readonly moved: Uint32Array; readonly backends: BackendChange[] },
): ServiceDelta {
  const { after, moved, backends } = change;
  const hash = tableHash(after);
  if (moved.length * SLOT_RECORD_BYTES >= after.length * 2) {
    return { name, backends, slots: null, table: encodeTable(after), hash };
  }
  const bytes = new Uint8Array(moved.length * SLOT_RECORD_BYTES);
  const view = new DataView(bytes.buffer);
  moved.forEach((slot, i) => {
    view.setUint32(i * SLOT_RECORD_BYTES, slot, true);
    view.setUint16(i * SLOT_RECORD_BYTES + 4, after[slot]!, true);
  });
  return { name, backends, slots: encodeBase64(bytes), table: null, hash };
}

/**
 * `table` with one service delta's slots applied (a new array; `table` is left as it was), checked against
 * the delta's hash. Throws a `DeltaError` when a slot is out of range or out of order, an entry points at no
 * backend of `backendCount`, or the result's hash differs.
 */
export function applyServiceDelta(
  table: Uint16Array,
  delta: ServiceDelta,
  backendCount: number,
): Uint16Array {
  let next: Uint16Array;
  try {
    next = delta.table !== null
      ? decodeTable(delta.table, backendCount)
      : applySlots(table, delta, backendCount);
  } catch (error) {
    if (error instanceof ProtocolError) throw new DeltaError(error.message);
    throw error;
  }
  if (next.length !== table.length) {
    throw new DeltaError(
      `Cannot apply the delta of service ${delta.name}: its table has ${next.length} slots, not ${table.length}`,
    );
  }
  const hash = tableHash(next);
  if (hash !== delta.hash) {
    throw new DeltaError(
      `Cannot apply the delta of service ${delta.name}: the table it gives hashes to ${hash}, not ${delta.hash}`,
    );
  }
  return next;
}

function applySlots(table: Uint16Array, delta: ServiceDelta, backendCount: number): Uint16Array {
  const bytes = decodeBase64(delta.slots ?? "", "slots");
  if (bytes.length % SLOT_RECORD_BYTES !== 0) {
    throw new DeltaError(
      `Cannot apply the delta of service ${delta.name}: ${bytes.length} bytes of slots is not a whole ` +
        `number of ${SLOT_RECORD_BYTES}-byte records`,
    );
  }
  const next = table.slice();
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let previous = -1;
  for (let offset = 0; offset < bytes.length; offset += SLOT_RECORD_BYTES) {
    const slot = view.getUint32(offset, true);
    const entry = view.getUint16(offset + 4, true);
    if (slot >= next.length || slot <= previous) {
      throw new DeltaError(
        `Cannot apply the delta of service ${delta.name}: slot ${slot} is out of range or out of order`,
      );
    }
    if (entry !== NO_BACKEND && entry >= backendCount) {
      throw new DeltaError(
        `Cannot apply the delta of service ${delta.name}: slot ${slot} points at backend ${entry} of ${backendCount}`,
      );
    }
    next[slot] = entry;
    previous = slot;
  }
  return next;
}

/**
 * The state and tables that `delta` leads to from `state` (whose services' decoded tables are `tables`, by
 * name). Nothing given is changed: the services the delta names get new specs and tables, the others are
 * shared. Throws a `DeltaError` when the delta is not for this state (another epoch, or a base that is not
 * `state.version`) or one of its services does not apply.
 */
export function applyStateDelta(
  state: ClusterState,
  tables: ReadonlyMap<string, Uint16Array>,
  delta: StateDelta,
): { state: ClusterState; tables: Map<string, Uint16Array> } {
  if (delta.epoch !== state.epoch || delta.base !== state.version) {
    throw new DeltaError(
      `Cannot apply the delta from version ${delta.base} of epoch ${delta.epoch}: this agent has version ` +
        `${state.version} of epoch ${state.epoch}`,
    );
  }
  const nextTables = new Map(tables);
  const changed = new Map<string, ServiceSpec>();
  for (const serviceDelta of delta.services) {
    const spec = state.services.find((service) => service.name === serviceDelta.name);
    const table = tables.get(serviceDelta.name);
    if (spec === undefined || table === undefined || changed.has(serviceDelta.name)) {
      throw new DeltaError(
        `Cannot apply the delta of service ${serviceDelta.name}: this agent does not serve it`,
      );
    }
    const backends = spec.backends.slice();
    for (const { index, weight, state: backendState } of serviceDelta.backends) {
      const backend = backends[index];
      if (backend === undefined) {
        throw new DeltaError(
          `Cannot apply the delta of service ${serviceDelta.name}: it has no backend ${index}`,
        );
      }
      backends[index] = { ...backend, weight, state: backendState };
    }
    const next = applyServiceDelta(table, serviceDelta, backends.length);
    nextTables.set(serviceDelta.name, next);
    changed.set(serviceDelta.name, { ...spec, backends, table: encodeTable(next) });
  }
  return {
    state: {
      ...state,
      version: delta.version,
      services: state.services.map((service) => changed.get(service.name) ?? service),
    },
    tables: nextTables,
  };
}
