/**
 * An io_uring instance driven from JavaScript through libc's `syscall` (FFI): the submission and
 * completion rings are mapped memory read and written with typed arrays, so queuing an operation or
 * taking a completion costs no call at all, and one `io_uring_enter` submits every queued operation and
 * waits for completions of many sockets.
 *
 * Why: each of Deno's socket calls is an op through its op layer, resource table and async runtime, a
 * promise per read and write; a proxied connection needs about twenty. Driven by a ring, the same
 * connection costs a few entries in shared memory. See ARCHITECTURE.md, "The io_uring data path".
 *
 * Linux only (5.19 or later for the features used here); `openRing` returns null elsewhere, when FFI is
 * not permitted, or when the kernel refuses io_uring (old kernels, seccomp filters of containers).
 */

/**
 * The C library the relay calls (io_uring's system calls, sockets, eventfd), the only library it opens. By
 * name, for the dynamic linker to find: `--allow-ffi=libc.so.6` would make Deno look for it in the working
 * directory, so the permission is `--allow-ffi`.
 */
export const LIBC_PATH = "libc.so.6";

const LIBC = {
  // The result is a C long, but every call here returns an int (an fd, a count, 0 or -1): the low half of
  // the register, and a number rather than a bigint to compare.
  syscall: { parameters: ["i64", "i64", "i64", "i64", "i64", "i64", "i64"], result: "i32" },
  mmap: { parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"], result: "pointer" },
  munmap: { parameters: ["pointer", "usize"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
} as const satisfies Deno.ForeignLibraryInterface;

type Libc = Deno.DynamicLibrary<typeof LIBC>;

/**
 * libc's `syscall`, its 64-bit arguments bigints. Deno's FFI also takes numbers for them, but only on its
 * slow path: once V8 had optimised the relay's loop onto the fast one, each number deoptimised it ("not a
 * BigInt") and it was compiled again, without end. The hot call, `enter`, passes bigints made once.
 */
type Syscall = (nr: bigint, a: bigint, b: bigint, c: bigint, d: bigint, e: bigint, f: bigint) => number;

/** io_uring's system call numbers, as `Syscall` takes them. */
const SYS = {
  x86_64: { setup: 425n, enter: 426n, register: 427n },
  aarch64: { setup: 425n, enter: 426n, register: 427n },
} as const;

/** Operations (`enum io_uring_op`). */
export const Op = {
  NOP: 0,
  READ: 22,
  TIMEOUT: 11,
  ACCEPT: 13,
  CONNECT: 16,
  CLOSE: 19,
  LINK_TIMEOUT: 15,
  SEND: 26,
  RECV: 27,
  SHUTDOWN: 34,
} as const;

/** Submission flags (`IOSQE_*`). */
export const IOSQE_IO_LINK = 1 << 2;
export const IOSQE_BUFFER_SELECT = 1 << 5;
export const IOSQE_CQE_SKIP_SUCCESS = 1 << 6;
/** Completion flags (`IORING_CQE_F_*`). */
export const CQE_F_BUFFER = 1 << 0;
export const CQE_F_MORE = 1 << 1;
export const CQE_BUFFER_SHIFT = 16;
/** `ioprio` bits of ACCEPT and RECV. */
export const ACCEPT_MULTISHOT = 1 << 0;

const SETUP_CQSIZE = 1 << 3;
const SETUP_SUBMIT_ALL = 1 << 7;
const SETUP_SINGLE_ISSUER = 1 << 12;
const SETUP_DEFER_TASKRUN = 1 << 13;
const FEAT_SINGLE_MMAP = 1 << 0;
const FEAT_EXT_ARG = 1 << 8;
const ENTER_GETEVENTS = 1n << 0n;
const ENTER_EXT_ARG = 1n << 3n;
/** `io_uring_enter`'s flags and argument size for a wait with a timeout (`io_uring_getevents_arg`). */
const WAIT_FLAGS = ENTER_GETEVENTS | ENTER_EXT_ARG;
const WAIT_ARG_SIZE = 24n;
const OFF_SQES = 0x10000000;
const REGISTER_PBUF_RING = 22n;
const PROT_READ_WRITE = 3;
const MAP_SHARED = 0x01;
const MAP_PRIVATE = 0x02;
const MAP_ANONYMOUS = 0x20;
const MAP_POPULATE = 0x8000;
const TWO_32 = 4_294_967_296;

export const ETIME = 62;
export const EINTR = 4;
export const EBUSY = 16;
export const ENOBUFS = 105;
export const ECANCELED = 125;

/** The address of a buffer's first byte, as a number (user-space addresses fit in 53 bits). */
export function addressOf(bytes: ArrayBufferView): number {
  return Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(bytes as Uint8Array<ArrayBuffer>)));
}

export interface RingOptions {
  /** Submission queue entries (a power of two). */
  readonly entries?: number;
  /** Completion queue entries (a power of two, at least `entries`). */
  readonly completions?: number;
}

/** Why a ring could not be had, when `openRing` returns null. */
export let unavailableReason = "";

/**
 * A ring for the calling thread alone (it is set up `SINGLE_ISSUER` and `DEFER_TASKRUN`: completions are
 * posted only while this thread waits in `enter`, which is also what keeps their cost on this thread).
 */
export class Ring {
  readonly #libc: Libc;
  readonly #syscall: Syscall;
  /** This thread's errno: libc's `syscall` returns -1 and leaves the error there. */
  readonly #errno: Deno.UnsafePointerView;
  readonly fd: number;
  readonly #sys: { setup: bigint; enter: bigint; register: bigint };
  /** `fd` as the syscall takes it. */
  readonly #fd: bigint;
  /** The counts 0 to the submission queue's size as bigints, made once (see `Syscall`). */
  readonly #counts: readonly bigint[];
  readonly #ringPointer: Deno.PointerObject;
  readonly #ringBytes: number;
  readonly #sqePointer: Deno.PointerObject;
  readonly #sqeBytes: number;
  readonly #u32: Uint32Array;
  readonly #i32: Int32Array;
  readonly #sqe8: Uint8Array;
  readonly #sqe16: Uint16Array;
  readonly #sqe32: Uint32Array;
  readonly #sqHead: number;
  readonly #sqTail: number;
  readonly #sqMask: number;
  readonly #sqEntries: number;
  readonly #cqHead: number;
  readonly #cqTail: number;
  readonly #cqMask: number;
  readonly #cqes: number;
  /** The tail not yet published to the kernel. */
  #tail: number;
  /** `struct io_uring_getevents_arg` and the `__kernel_timespec` it points to, at fixed addresses. */
  readonly #waitArg = new BigUint64Array(3);
  readonly #timespec = new Int32Array(4);
  readonly #waitArgAddress: bigint;
  #closed = false;

  constructor(libc: Libc, sys: { setup: bigint; enter: bigint; register: bigint }, options: RingOptions) {
    this.#libc = libc;
    this.#syscall = libc.symbols.syscall;
    this.#errno = new Deno.UnsafePointerView(libc.symbols.__errno_location()!);
    this.#sys = sys;
    const entries = options.entries ?? 4096;
    const params = new Uint32Array(30);
    params[1] = options.completions ?? entries * 4;
    params[2] = SETUP_CQSIZE | SETUP_SUBMIT_ALL | SETUP_SINGLE_ISSUER | SETUP_DEFER_TASKRUN;
    const fd = this.#syscall(this.#sys.setup, BigInt(entries), BigInt(addressOf(params)), 0n, 0n, 0n, 0n);
    if (fd < 0) throw new Error(`io_uring_setup failed (errno ${this.#errno.getInt32()})`);
    this.fd = fd;
    this.#fd = BigInt(fd);
    const features = params[5] as number;
    if (!(features & FEAT_SINGLE_MMAP) || !(features & FEAT_EXT_ARG)) {
      libc.symbols.close(fd);
      throw new Error("io_uring lacks SINGLE_MMAP or EXT_ARG (kernel older than 5.11)");
    }
    const sqEntries = params[0] as number;
    const cqEntries = params[1] as number;
    const sq = params.subarray(10, 20);
    const cq = params.subarray(20, 30);
    this.#ringBytes = Math.max((sq[6] as number) + sqEntries * 4, (cq[5] as number) + cqEntries * 16);
    this.#ringPointer = this.#map(this.#ringBytes, MAP_SHARED | MAP_POPULATE, fd, 0);
    this.#sqeBytes = sqEntries * 64;
    this.#sqePointer = this.#map(this.#sqeBytes, MAP_SHARED | MAP_POPULATE, fd, OFF_SQES);
    const ring = Deno.UnsafePointerView.getArrayBuffer(this.#ringPointer, this.#ringBytes);
    this.#u32 = new Uint32Array(ring);
    this.#i32 = new Int32Array(ring);
    const sqes = Deno.UnsafePointerView.getArrayBuffer(this.#sqePointer, this.#sqeBytes);
    this.#sqe8 = new Uint8Array(sqes);
    this.#sqe16 = new Uint16Array(sqes);
    this.#sqe32 = new Uint32Array(sqes);
    this.#sqHead = (sq[0] as number) >> 2;
    this.#sqTail = (sq[1] as number) >> 2;
    this.#sqMask = this.#u32[(sq[2] as number) >> 2] as number;
    this.#sqEntries = sqEntries;
    this.#counts = Array.from({ length: sqEntries + 1 }, (_, count) => BigInt(count));
    // The submission array maps ring slots to entries one to one, once.
    const array = (sq[6] as number) >> 2;
    for (let i = 0; i < sqEntries; i++) this.#u32[array + i] = i;
    this.#cqHead = (cq[0] as number) >> 2;
    this.#cqTail = (cq[1] as number) >> 2;
    this.#cqMask = this.#u32[(cq[2] as number) >> 2] as number;
    this.#cqes = (cq[5] as number) >> 2;
    this.#tail = this.#u32[this.#sqTail] as number;
    this.#waitArg[2] = BigInt(addressOf(this.#timespec));
    this.#waitArgAddress = BigInt(addressOf(this.#waitArg));
  }

  #map(bytes: number, flags: number, fd: number, offset: number): Deno.PointerObject {
    const pointer = this.#libc.symbols.mmap(null, BigInt(bytes), PROT_READ_WRITE, flags, fd, BigInt(offset));
    if (pointer === null || Number(Deno.UnsafePointer.value(pointer)) === -1) {
      throw new Error("mmap of the io_uring failed");
    }
    return pointer;
  }

  /**
   * Queues one operation; it reaches the kernel at the next `enter`. `data` comes back in its completion
   * (32 bits). Flushes the queue to the kernel first when it is full.
   */
  queue(
    op: number,
    fd: number,
    address: number,
    length: number,
    opFlags: number,
    data: number,
    flags = 0,
    offset = 0,
    ioprio = 0,
    bufferGroup = 0,
  ): void {
    if (this.#tail - (this.#u32[this.#sqHead] as number) >= this.#sqEntries) this.enter(0, -1);
    const index = this.#tail & this.#sqMask;
    const byte = index * 64;
    const word = index * 16;
    this.#sqe8.fill(0, byte, byte + 64);
    this.#sqe8[byte] = op;
    this.#sqe8[byte + 1] = flags;
    this.#sqe16[index * 32 + 1] = ioprio;
    this.#sqe32[word + 1] = fd;
    this.#sqe32[word + 2] = offset % TWO_32;
    this.#sqe32[word + 3] = Math.floor(offset / TWO_32);
    this.#sqe32[word + 4] = address % TWO_32;
    this.#sqe32[word + 5] = Math.floor(address / TWO_32);
    this.#sqe32[word + 6] = length;
    this.#sqe32[word + 7] = opFlags;
    this.#sqe32[word + 8] = data;
    this.#sqe16[index * 32 + 20] = bufferGroup;
    this.#tail = (this.#tail + 1) >>> 0;
  }

  /** Operations queued and not yet submitted (the kernel takes them all at each `enter`). */
  get queued(): number {
    return (this.#tail - (this.#u32[this.#sqHead] as number)) >>> 0;
  }

  /**
   * Submits what is queued and, when `waitMs` ≥ 0, waits until at least one completion is there or
   * `waitMs` passed (0: only takes what is ready). Returns what the
   * kernel did: the number submitted, or a negative errno of the wait (`-ETIME` when it timed out).
   */
  enter(minComplete: number, waitMs: number): number {
    if (this.#closed) throw new Error("The ring is closed");
    this.#u32[this.#sqTail] = this.#tail;
    const submit = this.queued;
    let flags = 0n;
    let arg = 0n;
    let argSize = 0n;
    if (waitMs >= 0) {
      flags = WAIT_FLAGS;
      const ms = Math.max(0, waitMs);
      // Seconds and nanoseconds, each the low half of a 64-bit little-endian field (the high half stays 0).
      this.#timespec[0] = Math.floor(ms / 1000);
      this.#timespec[2] = Math.round((ms % 1000) * 1_000_000);
      arg = this.#waitArgAddress;
      argSize = WAIT_ARG_SIZE;
    }
    const counts = this.#counts;
    const result = this.#syscall(
      this.#sys.enter,
      this.#fd,
      counts[submit] as bigint,
      counts[minComplete] as bigint,
      flags,
      arg,
      argSize,
    );
    if (result >= 0) return result;
    const errno = this.#errno.getInt32();
    if (errno !== ETIME && errno !== EINTR && errno !== EBUSY) {
      throw new Error(`io_uring_enter failed (errno ${errno})`);
    }
    return -errno;
  }

  /**
   * Calls `each(data, result, flags)` for every completion there is, oldest first, and frees their slots.
   * Returns how many there were.
   */
  complete(each: (data: number, result: number, flags: number) => void): number {
    let head = this.#u32[this.#cqHead] as number;
    const tail = this.#u32[this.#cqTail] as number;
    let count = 0;
    while (head !== tail) {
      const at = this.#cqes + (head & this.#cqMask) * 4;
      const data = this.#u32[at] as number;
      const result = this.#i32[at + 2] as number;
      const flags = this.#u32[at + 3] as number;
      head = (head + 1) >>> 0;
      // Publish the head before the callback: it may enter the ring, and the kernel must see the room.
      this.#u32[this.#cqHead] = head;
      count++;
      each(data, result, flags);
    }
    return count;
  }

  /**
   * A ring of provided buffers for `IOSQE_BUFFER_SELECT` receives of group `group`: `count` buffers of
   * `size` bytes, given to the kernel as they are needed and back by `recycle`.
   */
  provideBuffers(group: number, count: number, size: number): BufferRing {
    const ringBytes = count * 16;
    const ringPointer = this.#map(ringBytes, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    const pool = new Uint8Array(count * size);
    const registration = new BigUint64Array(5);
    registration[0] = BigInt(Number(Deno.UnsafePointer.value(ringPointer)));
    new Uint32Array(registration.buffer)[2] = count;
    new Uint16Array(registration.buffer)[6] = group;
    const result = this.#syscall(
      this.#sys.register,
      this.#fd,
      REGISTER_PBUF_RING,
      BigInt(addressOf(registration)),
      1n,
      0n,
      0n,
    );
    if (result < 0) throw new Error(`Cannot register a buffer ring (errno ${this.#errno.getInt32()})`);
    return new BufferRing(
      Deno.UnsafePointerView.getArrayBuffer(ringPointer, ringBytes),
      pool,
      count,
      size,
      group,
    );
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#libc.symbols.munmap(this.#sqePointer, BigInt(this.#sqeBytes));
    this.#libc.symbols.munmap(this.#ringPointer, BigInt(this.#ringBytes));
    this.#libc.symbols.close(this.fd);
  }
}

/** Buffers the kernel picks from for receives; each goes back with `recycle` once its bytes are sent. */
export class BufferRing {
  readonly #u16: Uint16Array;
  readonly #u32: Uint32Array;
  readonly #mask: number;
  readonly #base: number;
  #tail = 0;

  constructor(
    ring: ArrayBuffer,
    /** The bytes of every buffer, buffer `id` at `id * size`. */
    readonly pool: Uint8Array,
    readonly count: number,
    readonly size: number,
    readonly group: number,
  ) {
    this.#u16 = new Uint16Array(ring);
    this.#u32 = new Uint32Array(ring);
    this.#mask = count - 1;
    this.#base = addressOf(pool);
    for (let id = 0; id < count; id++) this.#add(id);
    this.#publish();
  }

  /** The address of buffer `id`'s first byte. */
  address(id: number): number {
    return this.#base + id * this.size;
  }

  /** Gives buffer `id` back to the kernel. */
  recycle(id: number): void {
    this.#add(id);
    this.#publish();
  }

  #add(id: number): void {
    const index = this.#tail & this.#mask;
    const address = this.#base + id * this.size;
    this.#u32[index * 4] = address % TWO_32;
    this.#u32[index * 4 + 1] = Math.floor(address / TWO_32);
    this.#u32[index * 4 + 2] = this.size;
    this.#u16[index * 8 + 6] = id;
    this.#tail = (this.#tail + 1) & 0xffff;
  }

  #publish(): void {
    // The tail is the reserved field of the first entry.
    this.#u16[7] = this.#tail;
  }
}

/**
 * A new ring, or null (with `unavailableReason` set) where io_uring cannot be used: not Linux on x86-64
 * or arm64, FFI not permitted, libc not found, or the kernel refusing the ring.
 */
export function openRing(options: RingOptions = {}): Ring | null {
  const sys = Deno.build.os === "linux" ? SYS[Deno.build.arch as keyof typeof SYS] : undefined;
  if (sys === undefined) {
    unavailableReason = `io_uring needs Linux on x86-64 or arm64, not ${Deno.build.os} on ${Deno.build.arch}`;
    return null;
  }
  if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") {
    unavailableReason = "FFI is not permitted";
    return null;
  }
  let libc: Libc;
  try {
    libc = Deno.dlopen(LIBC_PATH, LIBC);
  } catch (error) {
    unavailableReason = `cannot load libc: ${error instanceof Error ? error.message : String(error)}`;
    return null;
  }
  try {
    return new Ring(libc, sys, options);
  } catch (error) {
    unavailableReason = error instanceof Error ? error.message : String(error);
    libc.close();
    return null;
  }
}
