import assert from "node:assert/strict";
import { Channel } from "./channel.ts";

type Message = { n: number };

const codec = {
  parse: (body: Uint8Array): Message => JSON.parse(new TextDecoder().decode(body)),
  encode: (message: Message): Uint8Array => {
    const body = new TextEncoder().encode(JSON.stringify(message));
    const frame = new Uint8Array(4 + body.length);
    new DataView(frame.buffer).setUint32(0, body.length);
    frame.set(body, 4);
    return frame;
  },
};

/**
 * A connected pair of channels over loopback TCP; `writes` counts each side's write calls. Both close
 * when the pair is disposed (`using`).
 */
async function channelPair() {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const [left, right] = await Promise.all([
    Deno.connect({ hostname: "127.0.0.1", port: (listener.addr as Deno.NetAddr).port }),
    listener.accept(),
  ]);
  listener.close();
  const writes = { left: 0, right: 0 };
  const counted = (conn: Deno.Conn, side: keyof typeof writes): Deno.Conn =>
    new Proxy(conn, {
      get(target, key) {
        if (key === "write") {
          return (bytes: Uint8Array) => {
            writes[side]++;
            return target.write(bytes);
          };
        }
        const value = Reflect.get(target, key, target);
        return typeof value === "function" ? value.bind(target) : value;
      },
    });
  const pair = {
    left: new Channel<Message, Message>(counted(left, "left"), codec),
    right: new Channel<Message, Message>(counted(right, "right"), codec),
    writes,
    [Symbol.dispose]: () => {
      pair.left.close();
      pair.right.close();
    },
  };
  return pair;
}

/** Reads `count` messages from `messages`. */
async function take(messages: AsyncGenerator<Message>, count: number): Promise<number[]> {
  const got: number[] = [];
  while (got.length < count) {
    const next = await messages.next();
    if (next.done) break;
    got.push(next.value.n);
  }
  return got;
}

Deno.test("messages posted in one turn go out in one write, in order", async () => {
  using pair = await channelPair();
  const { left, right, writes } = pair;
  for (let n = 1; n <= 5; n++) left.post({ n });
  assert.deepEqual(await take(right.messages(), 5), [1, 2, 3, 4, 5]);
  assert.equal(writes.left, 1);
});

Deno.test("answers posted while handling one batch go out in one write", async () => {
  using pair = await channelPair();
  const { left, right, writes } = pair;
  for (let n = 1; n <= 5; n++) left.post({ n });
  const batches = right.batches();
  const batch = await batches.next();
  assert.equal(batch.done, false);
  assert.deepEqual(batch.value?.map((message) => message.n), [1, 2, 3, 4, 5]);
  for (const { n } of batch.value ?? []) right.post({ n: n * 10 });
  assert.deepEqual(await take(left.messages(), 5), [10, 20, 30, 40, 50]);
  assert.equal(writes.right, 1);
  await batches.return(undefined);
});

Deno.test("a send is written at once, together with and after what was posted before it", async () => {
  using pair = await channelPair();
  const { left, right, writes } = pair;
  right.post({ n: 100 });
  const sent = right.send({ n: 200 });
  assert.equal(writes.right, 1);
  await sent;
  assert.deepEqual(await take(left.messages(), 2), [100, 200]);
  assert.equal(writes.right, 1);
});
