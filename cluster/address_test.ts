import assert from "node:assert/strict";
import { formatHostPort, parseHostPort } from "./address.ts";

Deno.test("addresses parse for IPv4, names and bracketed IPv6", () => {
  assert.deepEqual(parseHostPort("10.0.0.11:80"), { host: "10.0.0.11", port: 80 });
  assert.deepEqual(parseHostPort("localhost:65535"), { host: "localhost", port: 65535 });
  assert.deepEqual(parseHostPort("[::1]:8080"), { host: "::1", port: 8080 });
});

Deno.test("bad addresses are refused with the value and the reason", () => {
  const cases: Array<[string, string]> = [
    ["10.0.0.1:99999", "port must be 1-65535"],
    ["10.0.0.1:0", "port must be 1-65535"],
    ["10.0.0.1", "expected host:port"],
    [":80", "the host is empty"],
    ["::1:80", "brackets"],
    ["[::1]80", "expected :port"],
    ["a b:80", "characters"],
    ["10.0.0.300:80", "is not an IPv4 address"],
    ["1.2.3:80", "is not an IPv4 address"],
    ["010.0.0.1:80", "is not an IPv4 address"],
    ["10.0.0.1.5:80", "is not an IPv4 address"],
    ["[1::2::3]:80", "is not an IPv6 address"],
    ["[::g]:80", "is not an IPv6 address"],
  ];
  for (const [text, why] of cases) {
    assert.throws(() => parseHostPort(text), (error: Error) => {
      return error instanceof RangeError &&
        error.message ===
          `Cannot parse address "${text}": ${error.message.split(": ").slice(1).join(": ")}` &&
        error.message.includes(why);
    });
  }
});

Deno.test("addresses format back to what parses", () => {
  for (const text of ["10.0.0.11:80", "[::1]:8080", "example.com:443"]) {
    assert.equal(formatHostPort(parseHostPort(text)), text);
  }
});

Deno.test("port 0 is allowed only for addresses switchyard binds", () => {
  assert.deepEqual(parseHostPort("127.0.0.1:0", { anyPort: true }), { host: "127.0.0.1", port: 0 });
  assert.throws(() => parseHostPort("127.0.0.1:0"), /port must be 1-65535/);
  assert.throws(() => parseHostPort("127.0.0.1:65536", { anyPort: true }), /port must be 0-65535/);
});

Deno.test("hosts of digits and dots must be IPv4 addresses; other names are host names", () => {
  assert.deepEqual(parseHostPort("0.0.0.0:80"), { host: "0.0.0.0", port: 80 });
  assert.deepEqual(parseHostPort("255.255.255.255:80"), { host: "255.255.255.255", port: 80 });
  assert.deepEqual(parseHostPort("10.0.0.300.example:80"), { host: "10.0.0.300.example", port: 80 });
  assert.deepEqual(parseHostPort("[::ffff:10.0.0.1]:80"), { host: "::ffff:10.0.0.1", port: 80 });
});
