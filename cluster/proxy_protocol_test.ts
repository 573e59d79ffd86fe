import assert from "node:assert/strict";
import { freeFixedPort, waitForPort, writeAll } from "../tests/_helpers.ts";
import { check, fc } from "../tests/_property.ts";
import { ipBytes } from "./flow_key.ts";
import {
  decodeProxyHeader,
  encodeProxyHeader,
  encodeProxyV1,
  encodeProxyV2,
  PP2_TYPE_CRC32C,
  PROXY_PROTOCOL_DEFAULTS,
  type ProxyAddress,
  type ProxyHeader,
  ProxyProtocolError,
  type ProxyTlv,
} from "./proxy_protocol.ts";

const SIGNATURE = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a];

const CLIENT: ProxyAddress = { ip: "192.0.2.10", port: 40000 };
const SERVICE: ProxyAddress = { ip: "198.51.100.1", port: 443 };
/** CLIENT then SERVICE as a v2 address block: addresses, then ports (40000 = 0x9c40, 443 = 0x01bb). */
const ADDRESSES_V4 = [192, 0, 2, 10, 198, 51, 100, 1, 0x9c, 0x40, 0x01, 0xbb];
const AUTHORITY_TLV: ProxyTlv = { type: 0x02, value: new TextEncoder().encode("example.com") };
/** Asks the encoder for a checksum: its value is overwritten. */
const CRC_TLV: ProxyTlv = { type: PP2_TYPE_CRC32C, value: new Uint8Array(4) };

function ascii(text: string): Uint8Array {
  return new TextEncoder().encode(text);
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** A v2 header written by hand: signature, the two given bytes, the body's length, the body. */
function rawV2(versionCommand: number, family: number, body: readonly number[]): Uint8Array {
  return Uint8Array.from([
    ...SIGNATURE,
    versionCommand,
    family,
    body.length >> 8,
    body.length & 0xff,
    ...body,
  ]);
}

/** Sixteen IPv6 address bytes from eight 16-bit groups. */
function groups(...values: number[]): number[] {
  return values.flatMap((group) => [group >> 8, group & 0xff]);
}

function decoded(bytes: Uint8Array): { header: ProxyHeader; length: number } {
  const result = decodeProxyHeader(bytes);
  assert.ok(result !== null, `expected a whole header in ${JSON.stringify(new TextDecoder().decode(bytes))}`);
  return result;
}

function assertRejected(bytes: Uint8Array, message: string, options: { maxBytes?: number } = {}): void {
  assert.throws(() => decodeProxyHeader(bytes, options), (error: unknown) => {
    assert.ok(error instanceof ProxyProtocolError, `expected a ProxyProtocolError, got ${error}`);
    assert.equal(error.message, message);
    return true;
  });
}

// ---------------------------------------------------------------------------------------------- encoding

Deno.test("v1 encodes TCP over IPv4 byte for byte", () => {
  assert.deepEqual(encodeProxyV1(CLIENT, SERVICE), ascii("PROXY TCP4 192.0.2.10 198.51.100.1 40000 443\r\n"));
  assert.deepEqual(
    encodeProxyV1({ ip: "0.0.0.0", port: 0 }, { ip: "255.255.255.255", port: 65535 }),
    ascii("PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n"),
  );
});

Deno.test("v1 encodes TCP over IPv6 with both addresses in RFC 5952 form", () => {
  assert.deepEqual(
    encodeProxyV1({ ip: "2001:DB8:0:0:1:0:0:1", port: 1234 }, { ip: "2001:0db8::0001", port: 80 }),
    ascii("PROXY TCP6 2001:db8::1:0:0:1 2001:db8::1 1234 80\r\n"),
  );
  assert.deepEqual(
    encodeProxyV1({ ip: "fe80::1%eth0", port: 1 }, { ip: "::", port: 2 }),
    ascii("PROXY TCP6 fe80::1 :: 1 2\r\n"),
    "a zone means nothing to the peer and is left out",
  );
});

Deno.test("v1 maps the IPv4 side to ::ffff:a.b.c.d when the other side is IPv6", () => {
  assert.deepEqual(
    encodeProxyV1(CLIENT, { ip: "2001:db8::1", port: 443 }),
    ascii("PROXY TCP6 ::ffff:192.0.2.10 2001:db8::1 40000 443\r\n"),
  );
  assert.deepEqual(
    encodeProxyV1({ ip: "2001:db8::7", port: 1000 }, SERVICE),
    ascii("PROXY TCP6 2001:db8::7 ::ffff:198.51.100.1 1000 443\r\n"),
  );
  assert.deepEqual(
    encodeProxyV1({ ip: "::ffff:192.0.2.10", port: 40000 }, SERVICE),
    ascii("PROXY TCP4 192.0.2.10 198.51.100.1 40000 443\r\n"),
    "an IPv4-mapped address (as a dual-stack listener reports it) is IPv4",
  );
});

Deno.test("v2 encodes TCP over IPv4 byte for byte", () => {
  assert.deepEqual(
    encodeProxyV2(CLIENT, SERVICE),
    Uint8Array.from([...SIGNATURE, 0x21, 0x11, 0x00, 0x0c, ...ADDRESSES_V4]),
  );
});

Deno.test("v2 encodes TCP over IPv6, and mixed families as IPv6, byte for byte", () => {
  assert.deepEqual(
    encodeProxyV2({ ip: "2001:db8::7", port: 1000 }, { ip: "2001:db8::1", port: 443 }),
    Uint8Array.from([
      ...SIGNATURE,
      0x21,
      0x21,
      0x00,
      0x24,
      ...[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x07],
      ...[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01],
      ...[0x03, 0xe8, 0x01, 0xbb],
    ]),
  );
  assert.deepEqual(
    encodeProxyV2(CLIENT, { ip: "2001:db8::1", port: 443 }),
    Uint8Array.from([
      ...SIGNATURE,
      0x21,
      0x21,
      0x00,
      0x24,
      ...[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 10],
      ...[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01],
      ...[0x9c, 0x40, 0x01, 0xbb],
    ]),
  );
});

Deno.test("v2 writes TLVs in order after the addresses and fills in a CRC32C TLV", () => {
  const tlvs: ProxyTlv[] = [
    AUTHORITY_TLV,
    { type: PP2_TYPE_CRC32C, value: Uint8Array.of(0xaa, 0xbb, 0xcc, 0xdd) }, // overwritten with the sum
  ];
  // The checksum was computed outside this code base: CRC32C of the header with the field zeroed.
  assert.deepEqual(
    encodeProxyV2(CLIENT, SERVICE, { tlvs }),
    Uint8Array.from([
      ...SIGNATURE,
      0x21,
      0x11,
      0x00,
      0x21,
      ...ADDRESSES_V4,
      ...[0x02, 0x00, 0x0b, ...ascii("example.com")],
      ...[0x03, 0x00, 0x04, 0xe1, 0xb6, 0x05, 0xfe],
    ]),
  );
  assert.deepEqual(
    encodeProxyV2(CLIENT, SERVICE, { tlvs: [{ type: 0xe0, value: new Uint8Array(0) }] }).subarray(14),
    Uint8Array.from([0x00, 0x0f, ...ADDRESSES_V4, 0xe0, 0x00, 0x00]),
  );
});

Deno.test("encodeProxyHeader follows a service's proxy_protocol setting", () => {
  assert.deepEqual(encodeProxyHeader("v1", CLIENT, SERVICE), encodeProxyV1(CLIENT, SERVICE));
  assert.deepEqual(encodeProxyHeader("v2", CLIENT, SERVICE), encodeProxyV2(CLIENT, SERVICE));
});

Deno.test("encoders reject addresses, ports and TLVs they cannot send, naming the value", () => {
  const throwsWith = (fn: () => unknown, type: ErrorConstructor, message: string) =>
    assert.throws(fn, (error: unknown) => {
      assert.ok(error instanceof type, `expected a ${type.name}, got ${error}`);
      assert.equal(error.message, message);
      return true;
    });
  throwsWith(
    () => encodeProxyV1({ ip: "example.com", port: 1 }, SERVICE),
    TypeError,
    'Cannot encode PROXY header: source address "example.com" is not an IPv4 or IPv6 address',
  );
  throwsWith(
    () => encodeProxyV2(CLIENT, { ip: "[::1]", port: 1 }),
    TypeError,
    'Cannot encode PROXY header: destination address "[::1]" is not an IPv4 or IPv6 address',
  );
  for (const port of [-1, 65536, 1.5, Number.NaN]) {
    throwsWith(
      () => encodeProxyV1({ ip: "192.0.2.1", port }, SERVICE),
      RangeError,
      `Cannot encode PROXY header: source port ${port} is not an integer from 0 to 65535`,
    );
  }
  throwsWith(
    () => encodeProxyV2(CLIENT, SERVICE, { tlvs: [{ type: 256, value: new Uint8Array(1) }] }),
    RangeError,
    "Cannot encode PROXY v2 TLV 0: type 256 is not an integer from 0 to 255",
  );
  throwsWith(
    () => encodeProxyV2(CLIENT, SERVICE, { tlvs: [{ type: 4, value: new Uint8Array(65536) }] }),
    RangeError,
    "Cannot encode PROXY v2 TLV 0: its value of 65536 bytes is longer than 65535",
  );
  throwsWith(
    () => encodeProxyV2(CLIENT, SERVICE, { tlvs: [{ type: 4, value: new Uint8Array(65535) }] }),
    RangeError,
    "Cannot encode PROXY v2 header: its 65550 bytes of addresses and TLVs exceed 65535",
  );
  throwsWith(
    () => encodeProxyV2(CLIENT, SERVICE, { tlvs: [{ type: PP2_TYPE_CRC32C, value: new Uint8Array(2) }] }),
    RangeError,
    "Cannot encode PROXY v2 TLV 0: a CRC32C value is 4 bytes, not 2",
  );
  throwsWith(
    () => encodeProxyV2(CLIENT, SERVICE, { tlvs: [CRC_TLV, { type: 4, value: new Uint8Array(0) }, CRC_TLV] }),
    RangeError,
    "Cannot encode PROXY v2 TLV 2: a header has one CRC32C TLV at most, and TLV 0 is one",
  );
});

// ---------------------------------------------------------------------------------------------- decoding

Deno.test("decoding gives back what the encoders wrote, and where the client's bytes start", () => {
  const pairs: [ProxyAddress, ProxyAddress][] = [
    [CLIENT, SERVICE],
    [{ ip: "0.0.0.0", port: 0 }, { ip: "255.255.255.255", port: 65535 }],
    [{ ip: "2001:db8::7", port: 1000 }, { ip: "2001:db8::1", port: 443 }],
    [{ ip: "::", port: 1 }, { ip: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", port: 2 }],
  ];
  const payload = ascii("GET / HTTP/1.1\r\n\r\n");
  const tlvs: ProxyTlv[] = [
    { type: 0x01, value: ascii("h2") },
    { type: 0x04, value: new Uint8Array(0) },
    CRC_TLV,
    { type: 0xe0, value: Uint8Array.from({ length: 300 }, (_, i) => i & 0xff) },
  ];
  for (const [source, destination] of pairs) {
    const v1 = encodeProxyV1(source, destination);
    assert.deepEqual(decoded(concat(v1, payload)), {
      header: { version: 1, command: "proxy", source, destination, tlvs: [] },
      length: v1.length,
    });
    const v2 = encodeProxyV2(source, destination, { tlvs });
    const result = decoded(concat(v2, payload));
    assert.equal(result.length, v2.length);
    assert.deepEqual(result.header.source, source);
    assert.deepEqual(result.header.destination, destination);
    assert.equal(result.header.version, 2);
    assert.equal(result.header.command, "proxy");
    assert.deepEqual(result.header.tlvs.map((tlv) => tlv.type), tlvs.map((tlv) => tlv.type));
    assert.deepEqual(result.header.tlvs[3], tlvs[3]);
  }
  // Mixed families come back as IPv6, the IPv4 side mapped.
  const mixed = decoded(encodeProxyV2(CLIENT, { ip: "2001:db8::1", port: 443 })).header;
  assert.deepEqual(mixed.source, { ip: "::ffff:192.0.2.10", port: 40000 });
  assert.deepEqual(
    decoded(encodeProxyV1(CLIENT, { ip: "2001:db8::1", port: 443 })).header.source,
    mixed.source,
  );
});

Deno.test("decoded TLV values are copies, untouched when the read buffer is reused", () => {
  const buffer = encodeProxyV2(CLIENT, SERVICE, { tlvs: [AUTHORITY_TLV] });
  const { header } = decoded(buffer);
  buffer.fill(0);
  assert.deepEqual(header.tlvs[0]?.value, ascii("example.com"));
});

Deno.test("v2 addresses decode to RFC 5952 canonical text", () => {
  const cases: [number[], string][] = [
    [groups(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), "2001:db8::1"],
    [groups(0x2001, 0xdb8, 0, 0, 1, 0, 0, 1), "2001:db8::1:0:0:1"], // equal runs: the first one
    [groups(0x2001, 0, 0, 1, 0, 0, 0, 1), "2001:0:0:1::1"], // the longest run
    [groups(0x2001, 0xdb8, 0, 1, 1, 1, 1, 1), "2001:db8:0:1:1:1:1:1"], // one zero group stays
    [groups(1, 0, 2, 0, 3, 0, 4, 0), "1:0:2:0:3:0:4:0"],
    [groups(0, 0, 1, 0, 0, 0, 0, 0), "0:0:1::"],
    [groups(0, 0, 0, 0, 0, 0, 0, 0), "::"],
    [groups(0, 0, 0, 0, 0, 0, 0, 1), "::1"],
    [groups(1, 0, 0, 0, 0, 0, 0, 0), "1::"],
    [groups(0xfe80, 0, 0, 0, 0x0202, 0xb3ff, 0xfe1e, 0x8329), "fe80::202:b3ff:fe1e:8329"],
    [groups(0xabcd, 0xef01, 0, 0, 0, 0, 0, 0x00ab), "abcd:ef01::ab"],
    [groups(1, 2, 3, 4, 5, 6, 7, 8), "1:2:3:4:5:6:7:8"],
    [groups(0, 0, 0, 0, 0, 0xffff, 0xc000, 0x0201), "::ffff:192.0.2.1"], // IPv4-mapped: mixed notation
    [groups(0, 0, 0, 0, 0, 0, 0xc000, 0x0201), "::c000:201"], // IPv4-compatible (deprecated): not
    [groups(0x64, 0xff9b, 0, 0, 0, 0, 0xc000, 0x0201), "64:ff9b::c000:201"],
  ];
  for (const [bytes, text] of cases) {
    const { header } = decoded(rawV2(0x21, 0x21, [...bytes, ...groups(0, 0, 0, 0, 0, 0, 0, 1), 0, 1, 0, 2]));
    assert.equal(header.source?.ip, text);
    // The encoder writes the same text back (an IPv6 peer keeps a mapped address IPv6).
    assert.deepEqual(
      encodeProxyV1({ ip: text, port: 1 }, { ip: "::1", port: 2 }),
      ascii(`PROXY TCP6 ${text} ::1 1 2\r\n`),
    );
  }
});

Deno.test("v1 UNKNOWN decodes as local with no addresses, whatever follows the word", () => {
  const local: ProxyHeader = { version: 1, command: "local", source: null, destination: null, tlvs: [] };
  assert.deepEqual(decodeProxyHeader(ascii("PROXY UNKNOWN\r\nhello")), { header: local, length: 15 });
  const worst =
    "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff " +
    "65535 65535\r\n";
  assert.equal(worst.length, 107, "the specification's longest line");
  assert.deepEqual(decodeProxyHeader(ascii(worst)), { header: local, length: 107 });
});

Deno.test("v1 accepts the longest TCP6 line and IPv6 in any case or form", () => {
  const max = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
  const line = `PROXY TCP6 ${max} ${max} 65535 65535\r\n`;
  assert.equal(line.length, 104);
  assert.deepEqual(decoded(ascii(line)).header.destination, { ip: max, port: 65535 });
  const { header } = decoded(ascii("PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::FFFF:192.0.2.1 1 2\r\n"));
  assert.deepEqual(header.source, { ip: "2001:db8::1", port: 1 });
  assert.deepEqual(header.destination, { ip: "::ffff:192.0.2.1", port: 2 });
});

Deno.test("v2 LOCAL and UNSPEC decode without addresses, TLVs kept", () => {
  const noop = [0x04, 0x00, 0x01, 0x00];
  assert.deepEqual(decodeProxyHeader(rawV2(0x20, 0x00, [])), {
    header: { version: 2, command: "local", source: null, destination: null, tlvs: [] },
    length: 16,
  });
  assert.deepEqual(decodeProxyHeader(rawV2(0x20, 0x11, [...ADDRESSES_V4, ...noop])), {
    header: {
      version: 2,
      command: "local",
      source: null, // "discard the protocol block including the family"
      destination: null,
      tlvs: [{ type: 4, value: new Uint8Array(1) }],
    },
    length: 32,
  });
  assert.deepEqual(decodeProxyHeader(rawV2(0x21, 0x00, noop)), {
    header: {
      version: 2,
      command: "proxy",
      source: null,
      destination: null,
      tlvs: [{ type: 4, value: new Uint8Array(1) }],
    },
    length: 20,
  });
});

Deno.test("decoding returns null at every point a valid header can be cut", () => {
  const headers = [
    encodeProxyV1(CLIENT, SERVICE),
    encodeProxyV1({ ip: "2001:db8::7", port: 1000 }, { ip: "2001:db8::1", port: 0 }),
    encodeProxyV1(CLIENT, { ip: "2001:db8::1", port: 443 }),
    ascii("PROXY UNKNOWN\r\n"),
    ascii("PROXY UNKNOWN 192.0.2.10 198.51.100.1 40000 443\r\n"),
    encodeProxyV2(CLIENT, SERVICE),
    encodeProxyV2({ ip: "2001:db8::7", port: 1000 }, SERVICE, {
      tlvs: [AUTHORITY_TLV, CRC_TLV],
    }),
    rawV2(0x20, 0x00, []),
    rawV2(0x21, 0x00, [0x04, 0x00, 0x00]),
  ];
  for (const header of headers) {
    for (let cut = 0; cut < header.length; cut++) {
      assert.equal(decodeProxyHeader(header.subarray(0, cut)), null, `cut at ${cut} of ${header}`);
    }
    assert.equal(decoded(header).length, header.length);
  }
});

Deno.test("decoding rejects a cut header as soon as it can no longer become valid", () => {
  const cases: [Uint8Array, string][] = [
    [ascii("G"), 'Cannot decode PROXY header: expected "PROXY " (v1) or the v2 signature, found 47'],
    [ascii("PROXX"), 'Cannot decode PROXY v1 header: the line must start with "PROXY ", found "PROXX"'],
    [ascii("PROXY TCP5"), 'Cannot decode PROXY v1 header: protocol "TCP5" is not TCP4, TCP6 or UNKNOWN'],
    [
      ascii("PROXY TCP4 192.0.2.010 "),
      'Cannot decode PROXY v1 header: the source address "192.0.2.010" is not a valid IPv4 address',
    ],
    [
      ascii("PROXY TCP6 fe80::1%"),
      'Cannot decode PROXY v1 header: the source address starting "fe80::1%" is not a valid IPv6 address',
    ],
    [
      ascii("PROXY TCP4 1.2.3.4 5.6.7.8 08"),
      'Cannot decode PROXY v1 header: the source port "08" has a leading zero',
    ],
    [
      ascii("PROXY TCP4 1.2.3.4 5.6.7.8 65536"),
      "Cannot decode PROXY v1 header: the source port 65536 is above 65535",
    ],
    [
      ascii("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 "),
      `Cannot decode PROXY v1 header: unexpected " " after the destination port`,
    ],
    [
      Uint8Array.of(0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x52),
      "Cannot decode PROXY v2 header: its signature begins 0d 0a 0d 0a 00 0d 0a 52 instead of 0d 0a 0d 0a 00 0d 0a 51",
    ],
    [
      Uint8Array.of(...SIGNATURE, 0x31),
      "Cannot decode PROXY v2 header: version 3 in version and command byte 0x31 is not supported, only 2",
    ],
    [
      Uint8Array.of(...SIGNATURE, 0x21, 0x12),
      "Cannot decode PROXY v2 header: family and protocol byte 0x12 (DGRAM over AF_INET) is not supported: " +
      "expected 0x00 (UNSPEC), 0x11 (TCP over IPv4) or 0x21 (TCP over IPv6)",
    ],
    [
      Uint8Array.of(...SIGNATURE, 0x21, 0x11, 0x10, 0x01),
      "Cannot decode PROXY v2 header: its length of 4113 bytes is above the limit of 4112",
    ],
  ];
  for (const [bytes, message] of cases) assertRejected(bytes, message);
});

Deno.test("malformed v1 lines are rejected with what is wrong and the value", () => {
  const v1 = (reason: string) => `Cannot decode PROXY v1 header: ${reason}`;
  const cases: [string, string][] = [
    [
      "GET / HTTP/1.1\r\n",
      'Cannot decode PROXY header: expected "PROXY " (v1) or the v2 signature, found 47 45 54 20 2f 20 48 54',
    ],
    ["PROXY\r\n", v1('the line must start with "PROXY ", found "PROXY"')],
    ["PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n", v1('the line must start with "PROXY ", found "PROXYTCP4 1.2.3."')],
    ["PROXY \r\n", v1('protocol "" is not TCP4, TCP6 or UNKNOWN')],
    ["PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", v1('protocol "tcp4" is not TCP4, TCP6 or UNKNOWN')],
    ["PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", v1('protocol "UDP4" is not TCP4, TCP6 or UNKNOWN')],
    ["PROXY UNKNOWNX\r\n", v1('protocol "UNKNOWNX" is not TCP4, TCP6 or UNKNOWN')],
    ["PROXY TCP4\r\n", v1('the line "PROXY TCP4" ends after the protocol')],
    [
      "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
      v1('the line "PROXY TCP4 1.2.3.4 5.6.7.8 1" ends after the source port'),
    ],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", v1('unexpected " 3" after the destination port')],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", v1('unexpected " " after the destination port')],
    ["PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", v1("the source address is empty")],
    ["PROXY TCP4 1.2.3.4 5.6.7.8  2\r\n", v1("the source port is empty")],
    ["PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n", v1('the source address "1.2.3.04" is not a valid IPv4 address')],
    [
      "PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
      v1('the source address "1.2.3.256" is not a valid IPv4 address'),
    ],
    ["PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", v1('the source address "1.2.3" is not a valid IPv4 address')],
    [
      "PROXY TCP4 1.2.3.4 5.6.7.8.9 1 2\r\n",
      v1('the destination address "5.6.7.8.9" is not a valid IPv4 address'),
    ],
    ["PROXY TCP4 1.2.3.4 ::1 1 2\r\n", v1('a TCP4 line cannot carry the IPv6 destination address "::1"')],
    [
      "PROXY TCP4 ::ffff:1.2.3.4 5.6.7.8 1 2\r\n",
      v1('a TCP4 line cannot carry the IPv6 source address "::ffff:1.2.3.4"'),
    ],
    ["PROXY TCP6 ::1 1.2.3.4 1 2\r\n", v1('a TCP6 line cannot carry the IPv4 destination address "1.2.3.4"')],
    [
      "PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
      v1('the source address "fe80::1%eth0" is not a valid IPv6 address'),
    ],
    ["PROXY TCP6 1::2::3 ::1 1 2\r\n", v1('the source address "1::2::3" is not a valid IPv6 address')],
    ["PROXY TCP6 12345:: ::1 1 2\r\n", v1('the source address "12345::" is not a valid IPv6 address')],
    ["PROXY TCP6 [::1] ::1 1 2\r\n", v1('the source address "[::1]" is not a valid IPv6 address')],
    [
      "PROXY TCP6 1:2:3:4:5:6:7 ::1 1 2\r\n",
      v1('the source address "1:2:3:4:5:6:7" is not a valid IPv6 address'),
    ],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", v1('the source port "080" has a leading zero')],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 1 00\r\n", v1('the destination port "00" has a leading zero')],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", v1("the source port 65536 is above 65535")],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n", v1("the destination port 99999 is above 65535")],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", v1('the source port "-1" is not a decimal number')],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 +7 2\r\n", v1('the source port "+7" is not a decimal number')],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 0x10 2\r\n", v1('the source port "0x10" is not a decimal number')],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 1e3 2\r\n", v1('the source port "1e3" is not a decimal number')],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", v1("LF at byte 30 is not preceded by CR")],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", v1("CR at byte 30 is followed by 0x58 instead of LF")],
    ["PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n", v1("byte 18 is 0x09, which is not printable ASCII")],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 1 2\0\r\n", v1("byte 30 is 0x00, which is not printable ASCII")],
    [`PROXY UNKNOWN ${"x".repeat(92)}\r\n`, v1("no CRLF within the first 107 bytes")], // CRLF at 107-108
    [`PROXY UNKNOWN ${"x".repeat(200)}`, v1("no CRLF within the first 107 bytes")],
  ];
  for (const [line, message] of cases) assertRejected(ascii(line), message);
  assertRejected(
    concat(ascii("PROXY TCP4 1.2.3.4 5.6.7.8 1 2"), Uint8Array.of(0xc3, 0xa9)),
    v1("byte 30 is 0xc3, which is not printable ASCII"),
  );
});

Deno.test("malformed v2 headers are rejected with what is wrong and the value", () => {
  const v2 = (reason: string) => `Cannot decode PROXY v2 header: ${reason}`;
  const families = (byte: string, words: string) =>
    v2(
      `family and protocol byte ${byte} (${words}) is not supported: ` +
        "expected 0x00 (UNSPEC), 0x11 (TCP over IPv4) or 0x21 (TCP over IPv6)",
    );
  const withCrc = encodeProxyV2(CLIENT, SERVICE, {
    tlvs: [AUTHORITY_TLV, CRC_TLV],
  });
  const badCrc = withCrc.slice();
  badCrc[badCrc.length - 1] = 0xff; // the right sum ends in 0xfe
  const cases: [Uint8Array, string][] = [
    [
      Uint8Array.of(...SIGNATURE.slice(0, 11), 0x0d, 0x21, 0x11, 0, 0),
      v2(
        "its signature begins 0d 0a 0d 0a 00 0d 0a 51 55 49 54 0d instead of 0d 0a 0d 0a 00 0d 0a 51 55 49 54 0a",
      ),
    ],
    [ascii("\r\nGET"), v2("its signature begins 0d 0a 47 instead of 0d 0a 0d")],
    [
      rawV2(0x11, 0x11, ADDRESSES_V4),
      v2("version 1 in version and command byte 0x11 is not supported, only 2"),
    ],
    [
      rawV2(0x01, 0x11, ADDRESSES_V4),
      v2("version 0 in version and command byte 0x01 is not supported, only 2"),
    ],
    [
      rawV2(0x22, 0x11, ADDRESSES_V4),
      v2("command 2 in version and command byte 0x22 is neither LOCAL (0) nor PROXY (1)"),
    ],
    [
      rawV2(0x2f, 0x11, ADDRESSES_V4),
      v2("command 15 in version and command byte 0x2f is neither LOCAL (0) nor PROXY (1)"),
    ],
    [rawV2(0x21, 0x12, ADDRESSES_V4), families("0x12", "DGRAM over AF_INET")],
    [rawV2(0x21, 0x22, new Array(36).fill(0)), families("0x22", "DGRAM over AF_INET6")],
    [rawV2(0x21, 0x31, new Array(216).fill(0)), families("0x31", "STREAM over AF_UNIX")],
    [rawV2(0x21, 0x32, new Array(216).fill(0)), families("0x32", "DGRAM over AF_UNIX")],
    [rawV2(0x20, 0x31, []), families("0x31", "STREAM over AF_UNIX")],
    [rawV2(0x21, 0x01, []), families("0x01", "STREAM over AF_UNSPEC")],
    [rawV2(0x21, 0x10, ADDRESSES_V4), families("0x10", "UNSPEC over AF_INET")],
    [rawV2(0x21, 0x13, ADDRESSES_V4), families("0x13", "unknown protocol 3 over AF_INET")],
    [rawV2(0x21, 0x41, ADDRESSES_V4), families("0x41", "STREAM over unknown family 4")],
    [
      rawV2(0x21, 0x11, ADDRESSES_V4.slice(0, 8)),
      v2("its length 8 is too short for the 12-byte TCP over IPv4 address block"),
    ],
    [
      rawV2(0x21, 0x21, ADDRESSES_V4),
      v2("its length 12 is too short for the 36-byte TCP over IPv6 address block"),
    ],
    [rawV2(0x20, 0x11, []), v2("its length 0 is too short for the 12-byte TCP over IPv4 address block")],
    [
      rawV2(0x21, 0x11, [...ADDRESSES_V4, 0x04, 0x00]),
      v2("the TLV at byte 28 is cut off: 2 bytes are left of the header, and a TLV takes 3 or more"),
    ],
    [
      rawV2(0x21, 0x00, [0x04]),
      v2("the TLV at byte 16 is cut off: 1 byte is left of the header, and a TLV takes 3 or more"),
    ],
    [
      rawV2(0x21, 0x11, [...ADDRESSES_V4, 0x04, 0x00, 0x05, 1, 2, 3]),
      v2("the TLV of type 0x04 at byte 28 has length 5, but only 3 bytes are left of the header"),
    ],
    [
      rawV2(0x21, 0x11, [...ADDRESSES_V4, 0x04, 0x00, 0x00, 0xe0, 0xff, 0xff]),
      v2("the TLV of type 0xe0 at byte 31 has length 65535, but only 0 bytes are left of the header"),
    ],
    [
      rawV2(0x21, 0x11, [...ADDRESSES_V4, 0x03, 0x00, 0x02, 0, 0]),
      v2("the CRC32C TLV at byte 28 has length 2 instead of 4"),
    ],
    [
      rawV2(0x21, 0x11, [...ADDRESSES_V4, 0x03, 0x00, 0x04, 0, 0, 0, 0, 0x03, 0x00, 0x04, 0, 0, 0, 0]),
      v2("the header has a second CRC32C TLV, at byte 35"),
    ],
    [badCrc, v2("its CRC32C TLV holds 0xe1b605ff but the header's checksum is 0xe1b605fe")],
  ];
  for (const [bytes, message] of cases) assertRejected(bytes, message);
  assert.ok(decodeProxyHeader(withCrc) !== null, "the header the bad checksum was made from is valid");
});

Deno.test("maxBytes bounds a header's length, 4112 bytes unless told otherwise", () => {
  assert.equal(PROXY_PROTOCOL_DEFAULTS.maxBytes, 4096 + 16);
  const padded = (length: number) =>
    encodeProxyV2(CLIENT, SERVICE, { tlvs: [{ type: 0x04, value: new Uint8Array(length - 16 - 12 - 3) }] });
  assert.equal(decoded(padded(4112)).length, 4112);
  assertRejected(
    padded(4113),
    "Cannot decode PROXY v2 header: its length of 4113 bytes is above the limit of 4112",
  );
  assertRejected(
    padded(4113).subarray(0, 16),
    "Cannot decode PROXY v2 header: its length of 4113 bytes is above the limit of 4112",
  );
  assert.equal(decodeProxyHeader(padded(64), { maxBytes: 64 })?.length, 64);
  assertRejected(
    padded(65),
    "Cannot decode PROXY v2 header: its length of 65 bytes is above the limit of 64",
    {
      maxBytes: 64,
    },
  );
  assert.equal(decodeProxyHeader(padded(65535 + 16), { maxBytes: 65535 + 16 })?.length, 65551);
  assertRejected(
    encodeProxyV1(CLIENT, SERVICE),
    "Cannot decode PROXY v1 header: no CRLF within the first 40 bytes",
    { maxBytes: 40 },
  );
  for (const maxBytes of [15, 16.5, Number.NaN]) {
    assert.throws(() => decodeProxyHeader(encodeProxyV1(CLIENT, SERVICE), { maxBytes }), {
      name: "RangeError",
      message: `Cannot decode PROXY header with maxBytes ${maxBytes}: it must be an integer of at least 16`,
    });
  }
});

// ---------------------------------------------------------------------------------------------- fuzzing

/** mulberry32: a small seeded generator, so that a failure can be replayed. */
function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `bytes`, wrapped so that every read of an index outside it is recorded in `outOfBounds`. */
function guarded(bytes: Uint8Array, outOfBounds: number[]): Uint8Array {
  return new Proxy(bytes, {
    get(target, property) {
      if (typeof property === "string" && /^-?\d+$/.test(property)) {
        const index = Number(property);
        if (index < 0 || index >= target.length) outOfBounds.push(index);
      }
      const value: unknown = Reflect.get(target, property, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

Deno.test("5,000 random and mutated inputs give a header, null or a ProxyProtocolError, reading only the input", () => {
  const seed = 20_251_017;
  const random = seededRandom(seed);
  const int = (below: number) => Math.floor(random() * below);
  const pick = <T>(items: readonly T[]): T => items[int(items.length)]!;
  const randomBytes = (length: number) => Uint8Array.from({ length }, () => int(256));
  const randomIp = () => {
    if (random() < 0.5) return Array.from({ length: 4 }, () => int(256)).join(".");
    return Array.from({ length: 8 }, () => (random() < 0.4 ? 0 : int(0x10000)).toString(16)).join(":");
  };
  const randomAddress = (): ProxyAddress => ({ ip: randomIp(), port: pick([0, 1, 80, 65535, int(65536)]) });
  const randomTlvs = (): ProxyTlv[] => {
    const tlvs: ProxyTlv[] = Array.from(
      { length: int(4) },
      () => ({ type: pick([1, 2, 4, 5, 0x20, 0xe0]), value: randomBytes(int(24)) }),
    );
    if (random() < 0.3) {
      tlvs.splice(int(tlvs.length + 1), 0, CRC_TLV);
    }
    return tlvs;
  };
  const validHeader = (): Uint8Array => {
    switch (int(6)) {
      case 0:
      case 1:
        return encodeProxyV1(randomAddress(), randomAddress());
      case 2:
      case 3:
        return encodeProxyV2(randomAddress(), randomAddress(), { tlvs: randomTlvs() });
      case 4:
        return ascii(
          pick(["PROXY UNKNOWN\r\n", "PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n", "PROXY UNKNOWN x\r\n"]),
        );
      default:
        return rawV2(pick([0x20, 0x21]), 0x00, pick([[], [0x04, 0x00, 0x00], [0xe0, 0x00, 0x01, 0x07]]));
    }
  };
  const v1Alphabet = ascii("0123456789abcdefABCDEF:. \r\nPROXYTCP46UNKOW%-");
  const mutate = (input: Uint8Array): Uint8Array => {
    const bytes = [...input];
    for (let n = int(4); n > 0; n--) {
      const at = int(bytes.length + 1);
      switch (int(7)) {
        case 0: // flip a bit
          if (at < bytes.length) bytes[at] = bytes[at]! ^ (1 << int(8));
          break;
        case 1: // a byte from the v1 alphabet
          if (at < bytes.length) bytes[at] = pick([...v1Alphabet]);
          break;
        case 2:
          bytes.splice(at, 0, random() < 0.5 ? int(256) : pick([...v1Alphabet]));
          break;
        case 3:
          bytes.splice(at, 1 + int(3));
          break;
        case 4:
          bytes.length = Math.min(bytes.length, at);
          break;
        case 5: // nudge the v2 length
          if (bytes.length >= 16) bytes[15] = (bytes[15]! + pick([-3, -1, 1, 3, 16])) & 0xff;
          break;
        default: // nudge the family and protocol, or the version and command
          if (bytes.length >= 14) {
            bytes[pick([12, 13])] = pick([0x00, 0x01, 0x10, 0x11, 0x12, 0x20, 0x21, 0x22, 0x31]);
          }
      }
    }
    return Uint8Array.from(bytes);
  };

  // The guard itself must notice a read past the end, or this test could not fail.
  const probe: number[] = [];
  void guarded(new Uint8Array(2), probe)[2];
  assert.deepEqual(probe, [2]);

  const outcomes = { decoded: 0, incomplete: 0, rejected: 0 };
  for (let i = 0; i < 5000; i++) {
    let input: Uint8Array;
    const kind = random();
    if (kind < 0.15) input = concat(Uint8Array.of(pick([0x50, 0x0d])), randomBytes(int(60)));
    else if (kind < 0.3) input = validHeader().slice(0, int(60)); // most likely cut short
    else input = mutate(validHeader());
    if (kind >= 0.3 && random() < 0.5) input = concat(input, randomBytes(int(12))); // the client's first bytes
    const context = `input ${i} (seed ${seed}): ${JSON.stringify([...input])}`;
    const outOfBounds: number[] = [];
    let result: ReturnType<typeof decodeProxyHeader>;
    try {
      result = decodeProxyHeader(guarded(input, outOfBounds));
    } catch (error) {
      assert.ok(error instanceof ProxyProtocolError, `${context} threw ${error}`);
      assert.match(error.message, /^Cannot decode PROXY (v1 |v2 )?header: \S.*[^.]$/, context);
      outcomes.rejected++;
      continue;
    } finally {
      assert.deepEqual(outOfBounds, [], `${context} read out of bounds`);
    }
    if (result === null) {
      assert.ok(input.length < PROXY_PROTOCOL_DEFAULTS.maxBytes, context);
      outcomes.incomplete++;
      continue;
    }
    outcomes.decoded++;
    const { header, length } = result;
    assert.ok(length <= input.length, context);
    assert.deepEqual(decodeProxyHeader(input.slice(0, length)), result, `${context}: the header alone`);
    assert.equal(decodeProxyHeader(input.slice(0, int(length))), null, `${context}: a cut header`);
    assert.equal(header.source === null, header.destination === null, context);
    if (header.version === 1) assert.deepEqual(header.tlvs, [], context);
    if (header.source !== null && header.destination !== null) {
      for (const { port } of [header.source, header.destination]) {
        assert.ok(Number.isInteger(port) && port >= 0 && port <= 65535, context);
      }
      // What was decoded can be sent on, and comes back the same.
      const again = decoded(encodeProxyV1(header.source, header.destination)).header;
      assert.deepEqual(ipBytes(again.source!.ip), ipBytes(header.source.ip), context);
      assert.deepEqual(ipBytes(again.destination!.ip), ipBytes(header.destination.ip), context);
    }
  }
  // Each outcome must be common, or the inputs are not exploring the decoder.
  for (const [outcome, count] of Object.entries(outcomes)) {
    assert.ok(count >= 500, `only ${count} of 5000 inputs were ${outcome}: ${JSON.stringify(outcomes)}`);
  }
});

// ---------------------------------------------------------------------------------------------- HAProxy

const HAPROXY = "/usr/sbin/haproxy";
const haproxyInstalled = (() => {
  try {
    return Deno.statSync(HAPROXY).isFile;
  } catch {
    return false;
  }
})();
const HAPROXY_TEST =
  "HAProxy accepts our v1 and v2 headers and passes the client's address on to its backend";

Deno.test({
  name: haproxyInstalled ? HAPROXY_TEST : `${HAPROXY_TEST} (ignored: ${HAPROXY} is not installed)`,
  ignore: !haproxyInstalled,
  async fn() {
    const backend = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const fromV1 = freeFixedPort(); // frontend whose server line has send-proxy
    const fromV2 = freeFixedPort(); // frontend whose server line has send-proxy-v2, with a CRC32C
    const dir = await Deno.makeTempDir({ prefix: "switchyard_haproxy_" });
    const config = `${dir}/haproxy.cfg`;
    await Deno.writeTextFile(
      config,
      [
        "defaults",
        "  mode tcp",
        "  timeout connect 2s",
        "  timeout client 10s",
        "  timeout server 10s",
        "frontend from_v1",
        `  bind 127.0.0.1:${fromV1} accept-proxy`,
        "  default_backend to_v1",
        "backend to_v1",
        `  server test 127.0.0.1:${backend.addr.port} send-proxy`,
        "frontend from_v2",
        `  bind 127.0.0.1:${fromV2} accept-proxy`,
        "  default_backend to_v2",
        "backend to_v2",
        `  server test 127.0.0.1:${backend.addr.port} send-proxy-v2 proxy-v2-options crc32c`,
        "",
      ].join("\n"),
    );
    const haproxy = new Deno.Command(HAPROXY, {
      args: ["-f", config, "-db"],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    let exited = false;
    const status = haproxy.status.then(() => exited = true);
    let failure: unknown = null;
    try {
      for (const port of [fromV1, fromV2]) await waitForPort(port, { what: "HAProxy", exited: () => exited });

      // A header HAProxy must refuse: it checks our CRC32C, so one changed byte gets the client dropped.
      const corrupt = encodeProxyV2(CLIENT, SERVICE, { tlvs: [CRC_TLV] });
      corrupt[19] = corrupt[19]! ^ 1; // the source address's last byte
      assert.throws(() => decodeProxyHeader(corrupt), ProxyProtocolError);
      assert.equal(await refused(fromV2, corrupt), true, "HAProxy took a header whose CRC32C is wrong");

      const cases = [
        {
          via: fromV1,
          header: encodeProxyV1(CLIENT, SERVICE),
          version: 1,
          source: CLIENT,
          destination: SERVICE,
        },
        {
          via: fromV2,
          header: encodeProxyV2({ ip: "203.0.113.7", port: 51234 }, { ip: "198.51.100.2", port: 8443 }, {
            tlvs: [AUTHORITY_TLV, CRC_TLV],
          }),
          version: 2,
          source: { ip: "203.0.113.7", port: 51234 },
          destination: { ip: "198.51.100.2", port: 8443 },
        },
        {
          // Mixed families: both sides agree the IPv4 end becomes ::ffff:a.b.c.d.
          via: fromV2,
          header: encodeProxyV1({ ip: "2001:db8::7", port: 1000 }, { ip: "198.51.100.3", port: 80 }),
          version: 2,
          source: { ip: "2001:db8::7", port: 1000 },
          destination: { ip: "::ffff:198.51.100.3", port: 80 },
        },
      ];
      for (const { via, header, version, source, destination } of cases) {
        const relayed = await relay(via, header, backend);
        const what = `what HAProxy sent on for ${JSON.stringify(new TextDecoder().decode(header))}`;
        assert.equal(relayed.header.version, version, what);
        assert.equal(relayed.header.command, "proxy", what);
        assert.deepEqual(relayed.header.source, source, what);
        assert.deepEqual(relayed.header.destination, destination, what);
        if (version === 2) {
          // decodeProxyHeader has already checked HAProxy's checksum; make sure there was one to check.
          assert.ok(relayed.header.tlvs.some((tlv) => tlv.type === PP2_TYPE_CRC32C), what);
        }
      }
    } catch (error) {
      failure = error;
    }
    closeQuietly(backend);
    if (!exited) haproxy.kill("SIGTERM");
    const output = await haproxy.output();
    await status;
    await Deno.remove(dir, { recursive: true });
    if (failure !== null) {
      const said = new TextDecoder().decode(output.stderr).trim();
      if (said !== "" && failure instanceof Error) failure.message += `\nHAProxy's stderr:\n${said}`;
      throw failure;
    }
  },
});

const PAYLOAD = ascii("hello from the client\n");
const REPLY = ascii("hello from the backend\n");

/**
 * Sends `header` and the client's first bytes through HAProxy at `port`; returns the header HAProxy's
 * connection to `backend` started with, after checking the bytes after it and a reply going back.
 */
async function relay(
  port: number,
  header: Uint8Array,
  backend: Deno.TcpListener,
): Promise<{ header: ProxyHeader }> {
  const client = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await writeAll(client, concat(header, PAYLOAD));
    const server = await within(
      backend.accept(),
      "HAProxy to connect to the backend",
      () => closeQuietly(backend),
    );
    try {
      let received: Uint8Array = new Uint8Array(0);
      let result = decodeProxyHeader(received);
      while (result === null || received.length < result.length + PAYLOAD.length) {
        const chunk = new Uint8Array(4096);
        const count = await within(server.read(chunk), "HAProxy's header", () => closeQuietly(server));
        if (count === null) {
          throw new Error(`HAProxy closed the backend connection after ${received.length} bytes`);
        }
        received = concat(received, chunk.subarray(0, count));
        result = decodeProxyHeader(received);
      }
      assert.deepEqual(received.subarray(result.length), PAYLOAD, "the client's bytes after the header");
      await writeAll(server, REPLY);
      const reply = new Uint8Array(REPLY.length);
      let got = 0;
      while (got < reply.length) {
        const count = await within(
          client.read(reply.subarray(got)),
          "the backend's reply",
          () => closeQuietly(client),
        );
        if (count === null) {
          throw new Error(`HAProxy closed the client connection after ${got} bytes of the reply`);
        }
        got += count;
      }
      assert.deepEqual(reply, REPLY);
      return { header: result.header };
    } finally {
      closeQuietly(server);
    }
  } finally {
    closeQuietly(client);
  }
}

/** True when HAProxy closes or resets a client that sent `header` before passing anything back. */
async function refused(port: number, header: Uint8Array): Promise<boolean> {
  const client = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await writeAll(client, concat(header, PAYLOAD));
    const read = client.read(new Uint8Array(64)).then(
      (count) => count === null,
      (error) => error instanceof Deno.errors.ConnectionReset,
    );
    return await within(read, "HAProxy to drop the client", () => closeQuietly(client));
  } finally {
    closeQuietly(client);
  }
}

/** Closes `resource` unless a timeout already did. */
function closeQuietly(resource: { close(): void }): void {
  try {
    resource.close();
  } catch (error) {
    if (!(error instanceof Deno.errors.BadResource)) throw error;
  }
}

/** Awaits `promise`; after 5 s calls `abort`, which must settle it, and throws naming `what`. */
async function within<T>(promise: Promise<T>, what: string, abort: () => void): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      abort();
      reject(new Error(`Timed out after 5 s waiting for ${what}`));
    }, 5_000);
  });
  try {
    return await Promise.race([promise, expired]);
  } finally {
    clearTimeout(timer);
    await promise.catch(() => undefined);
  }
}

Deno.test("property: any bytes decode to a header within them, null while one may follow, or a ProxyProtocolError", () => {
  const signature = Uint8Array.of(0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a);
  const bytes = fc.oneof(
    fc.uint8Array({ maxLength: 300 }),
    // Starts that get past the first checks: a v2 signature, or a v1 "PROXY " line.
    fc.uint8Array({ maxLength: 300 }).map((tail) => new Uint8Array([...signature, ...tail])),
    fc.tuple(
      fc.constantFrom(0x20, 0x21),
      fc.constantFrom(0x00, 0x11, 0x21),
      fc.uint8Array({ maxLength: 300 }),
    ).map((
      [command, family, tail],
    ) => new Uint8Array([...signature, command, family, tail.length >> 8, tail.length & 0xff, ...tail])),
    fc.string({ maxLength: 120 }).map((line) => new TextEncoder().encode(`PROXY ${line}`)),
  );
  check(
    fc.property(bytes, fc.integer({ min: 16, max: 5000 }), (input, maxBytes) => {
      let decoded;
      try {
        decoded = decodeProxyHeader(input, { maxBytes });
      } catch (error) {
        assert.ok(error instanceof ProxyProtocolError, `unexpected ${error}`);
        return;
      }
      if (decoded === null) return;
      assert.ok(decoded.length <= input.length && decoded.length <= maxBytes, `length ${decoded.length}`);
      // The header is exactly its bytes: decoding them alone gives it again.
      assert.deepEqual(decodeProxyHeader(input.subarray(0, decoded.length), { maxBytes }), decoded);
      for (const end of [decoded.header.source, decoded.header.destination]) {
        if (end !== null) assert.ok(Number.isInteger(end.port) && end.port >= 0 && end.port <= 65535);
      }
    }),
    5_000,
  );
});
