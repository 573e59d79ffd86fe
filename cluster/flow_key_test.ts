import assert from "node:assert/strict";
import {
  type FlowKey,
  hashClientIp,
  hashClientIpOfBytes,
  hashFlowKey,
  hashFlowKeyOfBytes,
  ipBytes,
  tableSlot,
} from "./flow_key.ts";
import { hash32 } from "./hash.ts";

const KEY: FlowKey = { clientIp: "192.0.2.10", clientPort: 40000, serviceIp: "10.0.0.1", servicePort: 80 };

function bytes(...values: number[]): Uint8Array {
  return Uint8Array.from(values);
}

Deno.test("IPv4 addresses parse to their four bytes", () => {
  assert.deepEqual(ipBytes("10.0.0.11"), bytes(10, 0, 0, 11));
  assert.deepEqual(ipBytes("0.0.0.0"), bytes(0, 0, 0, 0));
  assert.deepEqual(ipBytes("255.255.255.255"), bytes(255, 255, 255, 255));
  assert.deepEqual(ipBytes("192.168.100.7"), bytes(192, 168, 100, 7));
});

Deno.test("IPv6 addresses parse to their sixteen bytes, with :: compression and either case", () => {
  const v6 = (...groups: number[]) => Uint8Array.from(groups.flatMap((group) => [group >> 8, group & 0xff]));
  assert.deepEqual(ipBytes("::"), new Uint8Array(16));
  assert.deepEqual(ipBytes("::1"), v6(0, 0, 0, 0, 0, 0, 0, 1));
  assert.deepEqual(ipBytes("fd00::"), v6(0xfd00, 0, 0, 0, 0, 0, 0, 0));
  assert.deepEqual(ipBytes("2001:db8::8:800:200c:417a"), v6(0x2001, 0xdb8, 0, 0, 8, 0x800, 0x200c, 0x417a));
  assert.deepEqual(
    ipBytes("2001:DB8:0:0:8:800:200C:417A"),
    v6(0x2001, 0xdb8, 0, 0, 8, 0x800, 0x200c, 0x417a),
  );
  assert.deepEqual(ipBytes("1:2:3:4:5:6:7::"), v6(1, 2, 3, 4, 5, 6, 7, 0));
  assert.deepEqual(ipBytes("::2:3:4:5:6:7:8"), v6(0, 2, 3, 4, 5, 6, 7, 8));
  assert.deepEqual(ipBytes("1:0:0:4::8"), v6(1, 0, 0, 4, 0, 0, 0, 8));
  assert.deepEqual(ipBytes("64:ff9b::192.0.2.33"), v6(0x64, 0xff9b, 0, 0, 0, 0, 0xc000, 0x0221));
  assert.deepEqual(ipBytes("1:2:3:4:5:6:1.2.3.4"), v6(1, 2, 3, 4, 5, 6, 0x0102, 0x0304));
});

Deno.test("a %zone is dropped from an IPv6 address", () => {
  assert.deepEqual(ipBytes("fe80::1%eth0"), ipBytes("fe80::1"));
  assert.deepEqual(ipBytes("fe80::1%2"), ipBytes("fe80::1"));
});

Deno.test("an IPv4-mapped IPv6 address gives the plain IPv4 bytes and hashes the same", () => {
  assert.deepEqual(ipBytes("::ffff:10.0.0.11"), bytes(10, 0, 0, 11));
  assert.deepEqual(ipBytes("::FFFF:a00:b"), bytes(10, 0, 0, 11));
  assert.deepEqual(ipBytes("0:0:0:0:0:ffff:10.0.0.11"), bytes(10, 0, 0, 11));
  const mapped: FlowKey = {
    ...KEY,
    clientIp: `::ffff:${KEY.clientIp}`,
    serviceIp: `::ffff:${KEY.serviceIp}`,
  };
  assert.equal(hashFlowKey(mapped, 1), hashFlowKey(KEY, 1));
  assert.equal(hashClientIp("::ffff:192.0.2.10", 1), hashClientIp("192.0.2.10", 1));
  // The IPv4-compatible form ::a.b.c.d is a different, IPv6 address.
  assert.equal(ipBytes("::10.0.0.11").length, 16);
});

Deno.test("hashing an address's bytes gives the hash of its text, IPv4-mapped included", () => {
  const flows = [
    ["10.1.2.3", 40000, "192.168.0.1", 443],
    ["fd00::1", 1, "fd00::2:3", 65535],
    ["::ffff:10.1.2.3", 40000, "::ffff:192.168.0.1", 443],
    ["10.1.2.3", 0, "fd00::9", 80],
  ] as const;
  for (const [clientIp, clientPort, serviceIp, servicePort] of flows) {
    for (const seed of [0, 12345, 0xffffffff]) {
      assert.equal(
        hashFlowKeyOfBytes(ipBytesOf16(clientIp), clientPort, ipBytesOf16(serviceIp), servicePort, seed),
        hashFlowKey({ clientIp, clientPort, serviceIp, servicePort }, seed),
      );
      assert.equal(hashClientIpOfBytes(ipBytesOf16(clientIp), seed), hashClientIp(clientIp, seed));
    }
  }
});

/** An address's bytes as a socket address of its family holds them: mapped IPv4 stays 16 bytes. */
function ipBytesOf16(ip: string): Uint8Array {
  if (!ip.startsWith("::ffff:")) return ipBytes(ip);
  return new Uint8Array([...new Uint8Array(10), 0xff, 0xff, ...ipBytes(ip)]);
}

Deno.test("text that is not an IP address is refused with a TypeError naming it", () => {
  const invalid = [
    "",
    " 10.0.0.1",
    "10.0.0",
    "10.0.0.1.2",
    "10.0.0.256",
    "10.0.0.01",
    "10..0.1",
    "10.0.0.1.",
    "10.0.0.-1",
    "1.2.3.4%eth0",
    "localhost",
    ":",
    ":::",
    ":1::",
    "1:",
    "1::2::3",
    "1:2:3:4:5:6:7:8:9",
    "1:2:3:4:5:6:7",
    "1::2:3:4:5:6:7:8",
    "1:2:3:4:5:6:7:8::",
    "12345::",
    "g::1",
    "::1%",
    "[::1]",
    "::ffff:1.2.3",
    "::ffff:1.2.3.4.5",
    "1:2:3:4:5:6:7:1.2.3.4",
    "1.2.3.4::",
  ];
  for (const text of invalid) {
    assert.throws(
      () => ipBytes(text),
      (error: Error) =>
        error instanceof TypeError && error.message.startsWith(`Cannot parse IP address "${text}"`),
      `"${text}" was accepted`,
    );
  }
  assert.throws(() => hashFlowKey({ ...KEY, serviceIp: "nope" }, 0), TypeError);
  assert.throws(() => hashClientIp("nope", 0), TypeError);
});

Deno.test("ipBytes returns a fresh array each time", () => {
  const first = ipBytes("10.0.0.1");
  first[0] = 99;
  assert.deepEqual(ipBytes("10.0.0.1"), bytes(10, 0, 0, 1));
});

Deno.test("the flow key hashes its fixed encoding: ips, big-endian ports, then protocol 6", () => {
  const expected = bytes(192, 0, 2, 10, 0x9c, 0x40, 10, 0, 0, 1, 0, 80, 6);
  assert.equal(hashFlowKey(KEY, 7), hash32(expected, 7));
  const v6: FlowKey = { clientIp: "2001:db8::1", clientPort: 1, serviceIp: "10.0.0.1", servicePort: 443 };
  const v6Expected = bytes(
    0x20,
    0x01,
    0x0d,
    0xb8,
    ...new Array<number>(11).fill(0),
    1,
    0,
    1,
    10,
    0,
    0,
    1,
    1,
    0xbb,
    6,
  );
  assert.equal(hashFlowKey(v6, 7), hash32(v6Expected, 7));
  assert.equal(hashClientIp("192.0.2.10", 7), hash32(bytes(192, 0, 2, 10), 7));
});

Deno.test("the same key always hashes the same, and the seed changes the hash", () => {
  const first = hashFlowKey(KEY, 42);
  hashFlowKey({ clientIp: "2001:db8::1", clientPort: 5, serviceIp: "fd00::1", servicePort: 6 }, 42);
  assert.equal(hashFlowKey({ ...KEY }, 42), first);
  assert.notEqual(hashFlowKey(KEY, 43), first);
  assert.notEqual(hashClientIp(KEY.clientIp, 1), hashClientIp(KEY.clientIp, 2));
});

Deno.test("any change of port or address changes the flow hash", () => {
  const base = hashFlowKey(KEY, 0);
  assert.notEqual(hashFlowKey({ ...KEY, clientPort: 40001 }, 0), base);
  assert.notEqual(hashFlowKey({ ...KEY, servicePort: 81 }, 0), base);
  assert.notEqual(hashFlowKey({ ...KEY, clientIp: "192.0.2.11" }, 0), base);
  assert.notEqual(hashFlowKey({ ...KEY, serviceIp: "10.0.0.2" }, 0), base);
  // Swapping the ends is another flow.
  assert.notEqual(
    hashFlowKey({
      clientIp: KEY.serviceIp,
      clientPort: KEY.servicePort,
      serviceIp: KEY.clientIp,
      servicePort: KEY.clientPort,
    }, 0),
    base,
  );
  const seen = new Set<number>();
  for (let port = 1024; port < 1024 + 5000; port++) seen.add(hashFlowKey({ ...KEY, clientPort: port }, 0));
  assert.equal(seen.size, 5000);
});

Deno.test("a port outside 0-65535 is refused with a RangeError naming it", () => {
  for (const port of [-1, 65536, 1.5, Number.NaN]) {
    assert.throws(
      () => hashFlowKey({ ...KEY, clientPort: port }, 0),
      (error: Error) => error instanceof RangeError && error.message.includes(`port ${port}`),
    );
  }
  assert.equal(typeof hashFlowKey({ ...KEY, clientPort: 0, servicePort: 65535 }, 0), "number");
});

Deno.test("100,000 random client ports spread over 10 buckets within 5% of even", () => {
  let state = 0x2545f491;
  const counts = new Array<number>(10).fill(0);
  for (let i = 0; i < 100_000; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    const clientPort = 1024 + (state >>> 16) % (65536 - 1024);
    const slot = tableSlot(hashFlowKey({ ...KEY, clientPort }, 0), 10);
    counts[slot] = counts[slot]! + 1;
  }
  for (const [bucket, count] of counts.entries()) {
    assert.ok(Math.abs(count - 10_000) <= 500, `bucket ${bucket} got ${count}`);
  }
});

Deno.test("tableSlot is the hash modulo the table size", () => {
  assert.equal(tableSlot(0, 65537), 0);
  assert.equal(tableSlot(65537, 65537), 0);
  assert.equal(tableSlot(0xffffffff, 65537), 0xffffffff % 65537);
  assert.equal(tableSlot(12, 7), 5);
});
