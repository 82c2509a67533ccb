// Unit tests of the pure parts (node --test, against the built dist/).
import assert from "node:assert/strict";
import { test } from "node:test";

import { SeqTracker, expiryOf, renewalDelayMs } from "../dist/index.js";

const tick = (seq, extra = {}) => ({ instrument_token: 408065, seq, epoch: 1000, ...extra });

test("consecutive seqs are no gap", () => {
  const seqs = new SeqTracker();
  assert.deepEqual([1, 2, 3].map((s) => seqs.observe(tick(s))), [null, null, null]);
});

test("a jump within one epoch is a gap, with what was missed", () => {
  const seqs = new SeqTracker();
  seqs.observe(tick(5));
  assert.deepEqual(seqs.observe(tick(9)), { gap: { token: 408065, epoch: 1000, after: 5, seq: 9, missed: 3 } });
  assert.equal(seqs.observe(tick(10)), null);
});

test("a new epoch is not a gap", () => {
  const seqs = new SeqTracker();
  seqs.observe(tick(500));
  assert.deepEqual(seqs.observe(tick(1, { epoch: 2000 })), { epoch: { token: 408065, previous: 1000, epoch: 2000 } });
  assert.equal(seqs.observe(tick(2, { epoch: 2000 })), null);
});

test("a snapshot is not a gap and starts the count afresh", () => {
  const seqs = new SeqTracker();
  seqs.observe(tick(3));
  assert.equal(seqs.observe(tick(40, { snapshot: true, age_ms: 12 })), null);
  assert.equal(seqs.observe(tick(41)), null);
  assert.ok("gap" in seqs.observe(tick(43)));
});

test("tokens are counted apart, and a forgotten token starts afresh", () => {
  const seqs = new SeqTracker();
  seqs.observe(tick(1));
  assert.equal(seqs.observe({ instrument_token: 7, seq: 90, epoch: 1000 }), null);
  seqs.forget([408065]);
  assert.equal(seqs.observe(tick(50)), null);
});

test("a JWT's exp is read, and renewal comes before it", () => {
  const payload = Buffer.from(JSON.stringify({ sub: "u", exp: 2000000000 })).toString("base64url");
  assert.equal(expiryOf(`e30.${payload}.sig`), 2000000000);
  assert.equal(expiryOf("not.a-jwt"), null);
  assert.equal(renewalDelayMs(1000, 0, 60), 940000); // an hour-long token: a minute before exp
  assert.equal(renewalDelayMs(30, 0, 60), 20000); // a 30 s token: two thirds in
  assert.equal(renewalDelayMs(10, 20000, 60), 0); // already expired: now
});
