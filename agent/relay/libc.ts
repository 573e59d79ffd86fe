/**
 * The C library calls the relay makes (sockets, epoll, eventfd), through Deno's FFI, and the constants
 * they take: the one place that knows Linux's numbers. Every call is a plain system call on a nonblocking
 * descriptor; none of them blocks but `epoll_wait`, which the relay makes on a thread of its own.
 *
 * Arguments that C declares 64 bits wide (`size_t`) are passed as bigints: Deno's FFI takes numbers for
 * them only on its slow path (200 ns more per call, measured here). Results that are a C `ssize_t` are
 * read as `i32`, the low half of the register: every one here fits (a count of at most a buffer's size,
 * or -1).
 */

/**
 * By name, for the dynamic linker to find: `--allow-ffi=libc.so.6` would make Deno look for it in the
 * working directory, so the permission is `--allow-ffi`.
 */
export const LIBC_PATH = "libc.so.6";

export const LIBC = {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  listen: { parameters: ["i32", "i32"], result: "i32" },
  accept4: { parameters: ["i32", "buffer", "buffer", "i32"], result: "i32" },
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  getpeername: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "i32" },
  send: { parameters: ["i32", "buffer", "usize", "i32"], result: "i32" },
  shutdown: { parameters: ["i32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  epoll_create1: { parameters: ["i32"], result: "i32" },
  epoll_ctl: { parameters: ["i32", "i32", "i32", "buffer"], result: "i32" },
  epoll_wait: { parameters: ["i32", "buffer", "i32", "i32"], result: "i32" },
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "i32" },
  write: { parameters: ["i32", "buffer", "usize"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
} as const satisfies Deno.ForeignLibraryInterface;

export type Libc = Deno.DynamicLibrary<typeof LIBC>["symbols"];

export const AF_INET = 2;
export const AF_INET6 = 10;
export const SOCK_STREAM = 1;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
export const SOL_SOCKET = 1;
export const SO_REUSEADDR = 2;
export const SO_ERROR = 4;
export const SO_REUSEPORT = 15;
export const IPPROTO_TCP = 6;
export const TCP_NODELAY = 1;
export const SHUT_WR = 1;
export const SHUT_RDWR = 2;
export const MSG_NOSIGNAL = 0x4000;
export const EFD_CLOEXEC = 0o2000000;
export const EFD_NONBLOCK = 0o4000;
export const EPOLL_CLOEXEC = 0o2000000;

export const EPOLL_CTL_ADD = 1;
export const EPOLL_CTL_DEL = 2;
export const EPOLL_CTL_MOD = 3;
export const EPOLLIN = 0x001;
export const EPOLLOUT = 0x004;
export const EPOLLERR = 0x008;
export const EPOLLHUP = 0x010;
export const EPOLLRDHUP = 0x2000;
export const EPOLLET = 1 << 31;

export const EINTR = 4;
export const EAGAIN = 11;
export const EMFILE = 24;
export const EINPROGRESS = 115;
export const ETIMEDOUT = 110;

/**
 * `struct epoll_event`: a u32 of events, then a u64 of data; packed on x86_64 (12 bytes), aligned on
 * arm64 (16). The relay keeps its token in the data's low 32 bits.
 */
export const EPOLL_EVENT_BYTES = Deno.build.arch === "x86_64" ? 12 : 16;
/** Where the data's low 32 bits are in an event, in 32-bit words from its start. */
export const EPOLL_DATA_WORD = Deno.build.arch === "x86_64" ? 1 : 2;

/** Opens libc with the relay's calls, and this thread's `errno`. */
export function openLibc(): { libc: Libc; errno: () => number; close(): void } {
  const library = Deno.dlopen(LIBC_PATH, LIBC);
  const libc = library.symbols;
  const errno = new Deno.UnsafePointerView(libc.__errno_location()!);
  return { libc, errno: () => errno.getInt32(), close: () => library.close() };
}

/** Linux's text of the errnos a socket meets, as Deno's errors word them, so log lines read alike. */
const ERRNO_TEXT: Readonly<Record<number, string>> = {
  1: "Operation not permitted",
  12: "Cannot allocate memory",
  13: "Permission denied",
  22: "Invalid argument",
  23: "Too many open files in system",
  24: "Too many open files",
  98: "Address already in use",
  99: "Cannot assign requested address",
  101: "Network is unreachable",
  103: "Software caused connection abort",
  104: "Connection reset by peer",
  105: "No buffer space available",
  110: "Connection timed out",
  111: "Connection refused",
  113: "No route to host",
};

/** An errno as Deno's errors say it: `Connection refused (os error 111)`. */
export function errnoText(errno: number): string {
  return `${ERRNO_TEXT[errno] ?? "System error"} (os error ${errno})`;
}
