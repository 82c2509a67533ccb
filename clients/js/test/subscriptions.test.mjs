// Unit tests of the subscription bookkeeping (node --test, against the built dist/).
import assert from "node:assert/strict";
import { test } from "node:test";

import { Subscriptions } from "../dist/index.js";

const reply = (tokens, mode = "full", rejected = [], extra = {}) => ({ tokens, mode, total: tokens.length, rejected, ...extra });
// The resubscribe plan keyed by mode (and its candle intervals, when it has some).
const plan = (subs) =>
  Object.fromEntries(subs.takePlan().map((p) => [p.candles.length ? `${p.mode} ${p.candles}` : p.mode, p.items]));

test("names resolved in one request are each tied to their own token", () => {
  const subs = new Subscriptions();
  subs.record(reply([7, 101, 102]), [7], ["NSE:A", "NSE:B"]);
  assert.deepEqual(Object.fromEntries(subs.named()), { "NSE:A": [101], "NSE:B": [102] });
  assert.deepEqual(plan(subs), { full: ["NSE:A", "NSE:B", 7] });
});

test("unsubscribing the token a name resolved to forgets that name, and only it", () => {
  const subs = new Subscriptions();
  subs.record(reply([101, 102]), [], ["NSE:A", "NSE:B"]);
  subs.record(reply([7], "ltp"), [7], []);
  subs.drop([101]);
  assert.deepEqual(Object.fromEntries(subs.tokens()), { 102: "full", 7: "ltp" });
  assert.deepEqual(plan(subs), { full: ["NSE:B"], ltp: [7] });
});

test("unsubscribing by name returns its token and forgets the name", () => {
  const subs = new Subscriptions();
  subs.record(reply([101, 102]), [], ["NSE:A", "NSE:B"]);
  assert.deepEqual(subs.tokensOf(["NSE:B"]), [102]);
  subs.drop([102]);
  assert.deepEqual(plan(subs), { full: ["NSE:A"] });
});

test("refused names take no token", () => {
  const subs = new Subscriptions();
  const refused = [{ token: "NSE:NOPE", code: "unknown_instrument", message: "no instrument NSE:NOPE" }];
  subs.record(reply([102], "quote", refused), [], ["NSE:NOPE", "NSE:B"]);
  assert.deepEqual(Object.fromEntries(subs.named()), { "NSE:B": [102] });
});

test("when the reply cannot say which name is which, a token's unsubscribe still forgets its name", () => {
  const subs = new Subscriptions();
  // NSE:A resolved to 7, which was also asked by token: the reply cannot tie the names apart.
  subs.record(reply([7, 102]), [7], ["NSE:A", "NSE:B"]);
  subs.drop([102]);
  assert.deepEqual(plan(subs), { full: [7] }); // 7 is still held: by token, nothing comes back
  // A name's token refused by token (limit_exceeded) likewise.
  const more = new Subscriptions();
  more.record(reply([101], "ltp", [{ token: 102, code: "limit_exceeded", message: "full" }]), [], ["NSE:A", "NSE:B"]);
  more.drop([101]);
  assert.deepEqual(plan(more), {});
});

test("a renumbered name keeps its place and takes the new token", () => {
  const subs = new Subscriptions();
  subs.record(reply([101, 102]), [], ["NSE:A", "NSE:B"]);
  subs.renumberedFrom([101]);
  assert.deepEqual(Object.fromEntries(subs.named()), { "NSE:A": [], "NSE:B": [102] });
  subs.serverSubscribed(reply([201], "full", [], { reason: "instrument_renumbered" }));
  assert.deepEqual(Object.fromEntries(subs.named()), { "NSE:A": [201], "NSE:B": [102] });
  subs.drop([201]);
  assert.deepEqual(plan(subs), { full: ["NSE:B"] });
});

test("a token's candle intervals are those of its last subscribe, and come back after a reconnect", () => {
  const subs = new Subscriptions();
  subs.record(reply([7, 8], "quote", [], { candles: ["second", "minute"] }), [7, 8], []);
  subs.record(reply([101], "quote", [], { candles: ["minute"] }), [], ["NSE:A"]);
  subs.record(reply([8], "full"), [8], []); // subscribed again without candles: its candles stop
  assert.deepEqual(plan(subs), { "quote minute": ["NSE:A"], "quote minute,second": [7], full: [8] });
});
