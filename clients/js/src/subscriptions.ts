/** What a connection holds, so a reconnect can ask for it again (pure logic, no I/O). */

import type { Interval, SubscribeReply } from "./protocol.js";
import type { Mode } from "./ticks.js";

/** A subscription item: an instrument token, or an `EXCHANGE:TRADINGSYMBOL` name. */
export type Item = number | string;

/** What to ask for after a reconnect: `items` in `mode`, with the candle intervals they held. */
export interface Plan {
  mode: Mode;
  candles: Interval[];
  items: Item[];
}

/**
 * The tokens held and their modes, and which were subscribed by name. A name is resubscribed by
 * name (so it follows a renumbering); a token by token. Each name is tied to the token it
 * resolved to, read from the subscribe reply: the reply lists the tokens the request named
 * first, then the tokens of its names in their order, each once; when the reply cannot be read
 * that way (a name's token also asked by token or by another name, or refused by token), a name
 * is tied to every token the names of that request resolved to. Unsubscribing a token forgets
 * every name tied to it; a token still held without its name is then resubscribed by token.
 * Each token and name also keeps the candle intervals its last subscribe asked for (a subscribe
 * sets them anew, as the service does).
 */
export class Subscriptions {
  private held = new Map<number, Mode>();
  private candles = new Map<number, Interval[]>();
  private names = new Map<string, { mode: Mode; candles: Interval[]; tokens: Set<number> }>();
  private renumbering: string[] = []; // names whose token a renumbering took, until the new one comes

  /** Tokens held and their modes. */
  tokens(): Map<number, Mode> {
    return new Map(this.held);
  }

  /** Each name held and the tokens it is tied to. */
  named(): Map<string, number[]> {
    return new Map([...this.names].map(([name, named]) => [name, [...named.tokens]]));
  }

  /** Note what the server accepted of a subscribe of `tokens` and (upper-cased) `instruments`. */
  record(reply: SubscribeReply, tokens: number[], instruments: string[]): void {
    const candles = [...(reply.candles ?? [])].sort();
    for (const token of reply.tokens) {
      this.held.set(token, reply.mode);
      if (candles.length) this.candles.set(token, candles);
      else this.candles.delete(token);
    }
    const refusedNames = new Set(reply.rejected.map((r) => r.token).filter((t) => typeof t === "string"));
    const refusedTokens = reply.rejected.map((r) => r.token).filter((t) => typeof t === "number");
    const asked = new Set(tokens);
    const resolved = [...new Set(instruments)].filter((name) => !refusedNames.has(name));
    const byName = reply.tokens.filter((token) => !asked.has(token));
    const exact = byName.length === resolved.length && refusedTokens.every((t) => asked.has(t));
    resolved.forEach((name, i) => {
      this.names.set(name, { mode: reply.mode, candles, tokens: new Set(exact ? [byName[i]] : byName) });
    });
    for (const named of this.names.values()) {
      if (reply.tokens.some((token) => named.tokens.has(token))) Object.assign(named, { mode: reply.mode, candles });
    }
  }

  /** Tokens `names` is tied to (for an unsubscribe by name); forgets those names. */
  tokensOf(names: string[]): number[] {
    const tokens = names.flatMap((name) => [...(this.names.get(name)?.tokens ?? [])]);
    names.forEach((name) => this.names.delete(name));
    return tokens;
  }

  /** Forget `tokens` (unsubscribed, or withdrawn by the server) and every name tied to one. */
  drop(tokens: number[]): void {
    for (const token of tokens) {
      this.held.delete(token);
      this.candles.delete(token);
    }
    for (const [name, named] of this.names) {
      if (tokens.some((token) => named.tokens.has(token))) this.names.delete(name);
    }
  }

  /** The server moved these tokens' names to new tokens (`unsubscribed`, instrument_renumbered). */
  renumberedFrom(tokens: number[]): void {
    for (const [name, named] of this.names) {
      if (!tokens.some((token) => named.tokens.has(token))) continue;
      this.renumbering.push(name);
      tokens.forEach((token) => named.tokens.delete(token));
    }
    tokens.forEach((token) => {
      this.held.delete(token);
      this.candles.delete(token);
    });
  }

  /** The server subscribed by itself (`subscribed` with a reason); the new tokens of a renumbering. */
  serverSubscribed(reply: SubscribeReply): void {
    for (const token of reply.tokens) this.held.set(token, reply.mode);
    if (reply.reason !== "instrument_renumbered") return;
    for (const name of this.renumbering.splice(0)) {
      const named = this.names.get(name);
      if (named) reply.tokens.forEach((token) => named.tokens.add(token));
    }
  }

  /**
   * What to ask for after a reconnect, by mode and candle intervals: names by name, tokens held
   * without a name by token. Forgets everything: the replies are recorded afresh.
   */
  takePlan(): Plan[] {
    const plans = new Map<string, Plan>();
    const add = (mode: Mode, candles: Interval[], item: Item) => {
      const key = `${mode} ${candles.join(",")}`;
      if (!plans.has(key)) plans.set(key, { mode, candles, items: [] });
      plans.get(key)!.items.push(item);
    };
    const covered = new Set<number>();
    for (const [name, named] of this.names) {
      add(named.mode, named.candles, name);
      named.tokens.forEach((token) => covered.add(token));
    }
    for (const [token, mode] of this.held) if (!covered.has(token)) add(mode, this.candles.get(token) ?? [], token);
    this.held.clear();
    this.candles.clear();
    this.names.clear();
    return [...plans.values()];
  }
}
