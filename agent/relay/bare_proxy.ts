// Measurement only (branch uring-data-path): the bare io_uring proxy whose figures ARCHITECTURE.md gives.
// LISTEN=port BACKEND=port [NB=1] [NODELAY=0] deno run -A agent/relay/bare_proxy.ts
// Bare io_uring TCP proxy prototype: LISTEN port -> BACKEND port on 127.0.0.1. Measurement only.
const LISTEN = Number(Deno.env.get("LISTEN")), BACKEND = Number(Deno.env.get("BACKEND"));
const NODELAY = Deno.env.get("NODELAY") !== "0";
const SYNCCLOSE = Deno.env.get("SYNCCLOSE") === "1";
const NB = Deno.env.get("NB") === "1" ? 0o4000 : 0;
const libc = Deno.dlopen("libc.so.6", {
  syscall: { parameters: ["i64", "i64", "i64", "i64", "i64", "i64", "i64"], result: "i64" },
  syscallAsync: {
    name: "syscall",
    parameters: ["i64", "i64", "i64", "i64", "i64", "i64", "i64"],
    result: "i64",
    nonblocking: true,
  },
  mmap: { parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"], result: "pointer" },
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  listen: { parameters: ["i32", "i32"], result: "i32" },
  shutdown: { parameters: ["i32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
});
const S = libc.symbols;
const addrOf = (b: ArrayBufferView) =>
  BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(b as Uint8Array)));

function sockaddr(port: number) {
  const a = new Uint8Array(16);
  const v = new DataView(a.buffer);
  v.setUint16(0, 2, true);
  v.setUint16(2, port, false);
  a.set([127, 0, 0, 1], 4);
  return a;
}
const one = new Int32Array([1]);
const lfd = S.socket(2, 1 | 0o2000000, 0);
S.setsockopt(lfd, 1, 2, new Uint8Array(one.buffer), 4); // SO_REUSEADDR
if (S.bind(lfd, sockaddr(LISTEN), 16) !== 0) throw new Error("bind");
S.listen(lfd, 4096);
const backendAddr = sockaddr(BACKEND);
const backendAddrPtr = addrOf(backendAddr);

// ring
const SQN = 4096, CQN = 32768;
const params = new Uint32Array(30);
params[1] = CQN;
params[2] = Deno.env.get("ASYNC") === "1"
  ? (1 << 3) | (1 << 7) // CQSIZE SUBMIT_ALL
  : (1 << 3) | (1 << 7) | (1 << 12) | (1 << 13); // CQSIZE SUBMIT_ALL SINGLE_ISSUER DEFER_TASKRUN
const ringFd = Number(S.syscall(425n, BigInt(SQN), addrOf(params), 0n, 0n, 0n, 0n));
if (ringFd < 0) throw new Error("io_uring_setup " + ringFd);
const sqOff = params.subarray(10, 20), cqOff = params.subarray(20, 30);
const sqEntries = params[0]!, cqEntries = params[1]!;
const ringSize = Math.max(sqOff[6]! + sqEntries * 4, cqOff[5]! + cqEntries * 16);
const ringPtr = S.mmap(null, BigInt(ringSize), 3, 1 | 0x8000, ringFd, 0n)!; // PROT_RW, MAP_SHARED|POPULATE
const sqePtr = S.mmap(null, BigInt(sqEntries * 64), 3, 1 | 0x8000, ringFd, 0x10000000n)!;
const ring = Deno.UnsafePointerView.getArrayBuffer(ringPtr, ringSize);
const r32 = new Uint32Array(ring);
const sqesBuf = Deno.UnsafePointerView.getArrayBuffer(sqePtr, sqEntries * 64);
const sq8 = new Uint8Array(sqesBuf), sq32 = new Uint32Array(sqesBuf), sq16 = new Uint16Array(sqesBuf);
const sqHeadI = sqOff[0]! >> 2, sqTailI = sqOff[1]! >> 2, sqMask = r32[sqOff[2]! >> 2]!;
const sqArrayI = sqOff[6]! >> 2;
for (let i = 0; i < sqEntries; i++) r32[sqArrayI + i] = i;
const cqHeadI = cqOff[0]! >> 2,
  cqTailI = cqOff[1]! >> 2,
  cqMask = r32[cqOff[2]! >> 2]!,
  cqesI = cqOff[5]! >> 2;
const ri32 = new Int32Array(ring);
let sqTail = r32[sqTailI]!, toSubmit = 0;

function enter(submit: number, wait: number) {
  const r = Number(S.syscall(426n, BigInt(ringFd), BigInt(submit), BigInt(wait), wait > 0 ? 1n : 0n, 0n, 0n));
  if (r < 0 && r !== -4 && r !== -16) throw new Error("enter " + r);
  return r;
}
function sqe(
  op: number,
  fd: number,
  addr: bigint,
  len: number,
  opFlags: number,
  data: number,
  flags = 0,
  off = 0n,
): void {
  if (sqTail - r32[sqHeadI]! >= sqEntries) {
    r32[sqTailI] = sqTail;
    enter(toSubmit, 0);
    toSubmit = 0;
  }
  const i = sqTail & sqMask, b = i * 64;
  sq8.fill(0, b, b + 64);
  sq8[b] = op;
  sq8[b + 1] = flags;
  sq32[(b >> 2) + 1] = fd;
  sq32[(b >> 2) + 2] = Number(off & 0xffffffffn);
  sq32[(b >> 2) + 3] = Number(off >> 32n);
  sq32[(b >> 2) + 4] = Number(addr & 0xffffffffn);
  sq32[(b >> 2) + 5] = Number(addr >> 32n);
  sq32[(b >> 2) + 6] = len;
  sq32[(b >> 2) + 7] = opFlags;
  sq32[(b >> 2) + 8] = data;
  sqTail = (sqTail + 1) >>> 0;
  toSubmit++;
}
function setIoprio(ioprio: number) {
  sq16[((sqTail - 1) & sqMask) * 32 + 1] = ioprio;
}

// connections
const MAXC = 4096, BUF = 16384;
const slab = new Uint8Array(MAXC * 2 * BUF);
const slabAddr = addrOf(slab);
const cfd = new Int32Array(MAXC),
  bfd = new Int32Array(MAXC),
  pend = new Int32Array(MAXC),
  done = new Uint8Array(MAXC);
const sent = new Int32Array(MAXC * 2), want = new Int32Array(MAXC * 2);
const free: number[] = [];
for (let i = MAXC - 1; i >= 0; i--) free.push(i);
const OP_ACCEPT = 13, OP_CONNECT = 16, OP_SEND = 26, OP_RECV = 27, OP_CLOSE = 19;
const K_ACCEPT = 0, K_CONNECT = 1, K_RECV0 = 2, K_RECV1 = 3, K_SEND0 = 4, K_SEND1 = 5, K_IGN = 7;
const SKIP = 1 << 6; // IOSQE_CQE_SKIP_SUCCESS
const bufAddr = (s: number, d: number) => slabAddr + BigInt((s * 2 + d) * BUF);

function armAccept() {
  sqe(OP_ACCEPT, lfd, 0n, 0, 0o2000000 | NB, K_ACCEPT);
  setIoprio(1);
}
function recv(s: number, d: number) {
  pend[s]!++;
  sqe(OP_RECV, d === 0 ? cfd[s]! : bfd[s]!, bufAddr(s, d), BUF, 0, (s << 3) | (K_RECV0 + d));
}
function send(s: number, d: number) {
  const k = s * 2 + d;
  pend[s]!++;
  sqe(
    OP_SEND,
    d === 0 ? bfd[s]! : cfd[s]!,
    bufAddr(s, d) + BigInt(sent[k]!),
    want[k]! - sent[k]!,
    0x4000, /*NOSIGNAL*/
    (s << 3) | (K_SEND0 + d),
  );
}
function finishDir(s: number, d: number, abort: boolean) {
  if (abort) {
    if (done[s] !== 3) {
      S.shutdown(cfd[s]!, 2);
      S.shutdown(bfd[s]!, 2);
    }
    done[s] = 3;
  } else {
    S.shutdown(d === 0 ? bfd[s]! : cfd[s]!, 1);
    done[s]! |= 1 << d;
  }
  maybeFree(s);
}
function maybeFree(s: number) {
  if (done[s] === 3 && pend[s] === 0) {
    if (SYNCCLOSE) {
      S.close(cfd[s]!);
      S.close(bfd[s]!);
    } else {
      sqe(OP_CLOSE, cfd[s]!, 0n, 0, 0, K_IGN, SKIP);
      sqe(OP_CLOSE, bfd[s]!, 0n, 0, 0, K_IGN, SKIP);
    }
    free.push(s);
  }
}
const nodelayBuf = new Uint8Array(one.buffer);
armAccept();
const ASYNC = Deno.env.get("ASYNC") === "1";
for (;;) {
  r32[sqTailI] = sqTail;
  if (ASYNC) {
    // submit now without waiting, then wait on a blocking-pool thread
    if (Deno.env.get("ALLASYNC") === "1") {
      await S.syscallAsync(426n, BigInt(ringFd), BigInt(toSubmit), 1n, 1n, 0n, 0n);
      toSubmit = 0;
    } else {
      if (toSubmit > 0) enter(toSubmit, 0);
      toSubmit = 0;
      if (r32[cqTailI] === r32[cqHeadI]) await S.syscallAsync(426n, BigInt(ringFd), 0n, 1n, 1n, 0n, 0n);
    }
  } else {
    enter(toSubmit, 1);
    toSubmit = 0;
  }
  let head = r32[cqHeadI]!;
  const tail = r32[cqTailI]!;
  while (head !== tail) {
    const ci = cqesI + (head & cqMask) * 4;
    const data = r32[ci]!, res = ri32[ci + 2]!, cflags = r32[ci + 3]!;
    head = (head + 1) >>> 0;
    const kind = data & 7, s = data >>> 3;
    switch (kind) {
      case K_ACCEPT: {
        if (!(cflags & 2)) armAccept(); // IORING_CQE_F_MORE gone
        if (res < 0) break;
        const t = free.pop();
        if (t === undefined) {
          sqe(OP_CLOSE, res, 0n, 0, 0, K_IGN, SKIP);
          break;
        }
        cfd[t] = res;
        done[t] = 0;
        pend[t] = 1;
        const b = S.socket(2, 1 | 0o2000000 | NB, 0);
        bfd[t] = b;
        if (NODELAY) {
          S.setsockopt(res, 6, 1, nodelayBuf, 4);
          S.setsockopt(b, 6, 1, nodelayBuf, 4);
        }
        sqe(OP_CONNECT, b, backendAddrPtr, 0, 0, (t << 3) | K_CONNECT, 0, 16n);
        break;
      }
      case K_CONNECT:
        pend[s]!--;
        if (res < 0) {
          done[s] = 3;
          S.shutdown(cfd[s]!, 2);
          maybeFree(s);
          break;
        }
        recv(s, 0);
        recv(s, 1);
        break;
      case K_RECV0:
      case K_RECV1: {
        const d = kind - K_RECV0;
        pend[s]!--;
        if (done[s] === 3) {
          maybeFree(s);
          break;
        }
        if (res <= 0) {
          finishDir(s, d, res < 0);
          break;
        }
        sent[s * 2 + d] = 0;
        want[s * 2 + d] = res;
        send(s, d);
        break;
      }
      case K_SEND0:
      case K_SEND1: {
        const d = kind - K_SEND0, k = s * 2 + d;
        pend[s]!--;
        if (done[s] === 3) {
          maybeFree(s);
          break;
        }
        if (res < 0) {
          finishDir(s, d, true);
          break;
        }
        sent[k]! += res;
        if (sent[k]! < want[k]!) send(s, d);
        else recv(s, d);
        break;
      }
    }
  }
  r32[cqHeadI] = head;
}
