/**
 * Splits a model's streamed output into reasoning and answer: a pure state machine fed decoded text pieces
 * with the token ids that produced them (no model, no I/O, so every token boundary can be tested).
 *
 *   start ──open tag──▶ reasoning-lead ─▶ reasoning ──close tag──▶ answer-lead ─▶ answer ──stop string──▶ stopped
 *     └──────────────── anything else ─────────────────────────────────────────▲
 *
 * - `start`: only leading whitespace and the open tag are recognized, so a model that opens the reasoning itself
 *   is detected, and one that answers directly is not delayed past the first non-matching character.
 *   With `startInReasoning` (the prompt opened the tag) the parser starts in `reasoning-lead` instead, and still
 *   swallows an open tag the model repeats.
 * - Whitespace between a tag and the text is trimmed (as the Qwen3 template's `strip('\n')` does), so the
 *   reasoning and the answer neither start nor end with the template's newlines.
 * - Hold-back: text that could be the start of the close tag (in reasoning) or of a stop string (in the answer)
 *   stays buffered until the next piece decides; so a tag is never split across parts nor leaked into text, and
 *   a stop string is never partly emitted. Stop strings apply to the answer only.
 * Token accounting: each token id goes to the part that releases the last character of its text (tokens with
 * no text ride with the next part of the same channel). Tags and trimmed whitespace count for the reasoning
 * when they belong to it, so reasoningTokens + answerTokens equals the number of tokens fed, always; tokens of a
 * stop string (and after it) appear in no part and count as answer tokens.
 */
import { findFirst, partialSuffixLength } from './stop-strings.js';

export type ReasoningClosedBy = 'model' | 'budget' | 'incomplete';

export type ReasoningStreamPart =
  | { type: 'reasoning-start'; tokens: number[] }
  | { type: 'reasoning-delta'; text: string; tokens: number[] }
  | { type: 'reasoning-end'; tokens: number[]; reasoningTokens: number; closedBy: ReasoningClosedBy }
  | { type: 'text-delta'; text: string; tokens: number[] };

export interface ReasoningStreamParserOptions {
  /** Reasoning tags; without them everything is answer text (only stop strings apply). */
  tags?: { open: string; close: string };
  /** The prompt already opened the reasoning (e.g. the R1-distill template ends with `<think>\n`). */
  startInReasoning?: boolean;
  /** Strings that end the answer; they and anything after them are not emitted. */
  stop?: readonly string[];
}

type Phase = 'start' | 'reasoning-lead' | 'reasoning' | 'answer-lead' | 'answer' | 'stopped';

const isWs = (c: string | undefined) => c !== undefined && /\s/.test(c);
function leadingWs(s: string): number {
  let i = 0;
  while (i < s.length && isWs(s[i])) i++;
  return i;
}

export class ReasoningStreamParser {
  private readonly open: string;
  private readonly close: string;
  private readonly stops: readonly string[];
  private phase: Phase;
  /** Text received but not yet released. */
  private buf = '';
  /** Tokens not yet released; `end` = offset in `buf` where the token's text ends. */
  private pending: Array<{ id: number; end: number }> = [];
  /** Tokens whose text was consumed (trimmed whitespace, a repeated open tag) without a part of their own. */
  private carry: number[] = [];
  private out: ReasoningStreamPart[] = [];
  private openSeen = false;
  private forcedClose = false;
  private fed = 0;
  private _reasoningTokens = 0;
  private _reasoning = '';
  private _text = '';
  private _stopString: string | undefined;

  constructor(options: ReasoningStreamParserOptions = {}) {
    this.open = options.tags?.open ?? '';
    this.close = options.tags?.close ?? '';
    this.stops = (options.stop ?? []).filter((s) => s.length > 0);
    if (!options.tags) this.phase = 'answer';
    else if (options.startInReasoning) {
      this.phase = 'reasoning-lead';
      this.out.push({ type: 'reasoning-start', tokens: [] });
    } else this.phase = 'start';
  }

  /** Reasoning text released so far (tags and surrounding whitespace excluded). */
  get reasoning(): string { return this._reasoning; }
  /** Answer text released so far. */
  get text(): string { return this._text; }
  /** The stop string that ended the answer, if any. */
  get stopString(): string | undefined { return this._stopString; }
  get stopped(): boolean { return this.phase === 'stopped'; }
  /** True between the open and the close tag. */
  get inReasoning(): boolean { return this.phase === 'reasoning-lead' || this.phase === 'reasoning'; }
  /** Tokens fed so far. */
  get tokenCount(): number { return this.fed; }
  /** Tokens that belong to the reasoning so far, held ones included (what a reasoning budget counts). */
  get reasoningTokens(): number {
    return this._reasoningTokens + (this.inReasoning ? this.pending.length + this.carry.length : 0);
  }
  /** tokenCount - reasoningTokens. */
  get answerTokens(): number { return this.fed - this.reasoningTokens; }

  /** The next close tag is the one a reasoning budget injects: its reasoning-end says closedBy 'budget'. */
  expectForcedClose(): void { this.forcedClose = true; }

  /**
   * Feeds decoded text and the token ids that produced it (several ids: the text ends with the last one).
   * Returns the parts that can be released now.
   */
  push(text: string, tokens: number | readonly number[] = []): ReasoningStreamPart[] {
    const ids = typeof tokens === 'number' ? [tokens] : tokens;
    this.fed += ids.length;
    if (this.phase === 'stopped') return this.drain();
    this.buf += text;
    for (const id of ids) this.pending.push({ id, end: this.buf.length });
    this.process(false);
    return this.drain();
  }

  /** Ends the stream: releases everything held (an unclosed reasoning ends with closedBy 'incomplete'). */
  finish(): ReasoningStreamPart[] {
    this.process(true);
    return this.drain();
  }

  private drain(): ReasoningStreamPart[] {
    const out = this.out;
    this.out = [];
    return out;
  }

  /** Removes the first n characters of the buffer; returns the tokens whose text ends within them. */
  private take(n: number): number[] {
    this.buf = this.buf.slice(n);
    let k = 0;
    while (k < this.pending.length && this.pending[k]!.end <= n) k++;
    const taken = this.pending.splice(0, k).map((p) => p.id);
    for (const p of this.pending) p.end -= n;
    return taken;
  }

  private withCarry(tokens: number[]): number[] {
    if (this.carry.length === 0) return tokens;
    const all = [...this.carry, ...tokens];
    this.carry = [];
    return all;
  }

  private emitReasoning(text: string, tokens: number[]): void {
    const all = this.withCarry(tokens);
    if (text === '' && all.length === 0) return;
    this._reasoning += text;
    this._reasoningTokens += all.length;
    this.out.push({ type: 'reasoning-delta', text, tokens: all });
  }

  private emitText(text: string, tokens: number[]): void {
    const all = this.withCarry(tokens);
    if (text === '' && all.length === 0) return;
    this._text += text;
    this.out.push({ type: 'text-delta', text, tokens: all });
  }

  private endReasoning(tokens: number[], closedBy: ReasoningClosedBy): void {
    const all = this.withCarry(tokens);
    this._reasoningTokens += all.length;
    this.out.push({ type: 'reasoning-end', tokens: all, reasoningTokens: this._reasoningTokens, closedBy });
  }

  private process(final: boolean): void {
    for (;;) {
      switch (this.phase) {
        case 'start': {
          const ws = leadingWs(this.buf);
          const rest = this.buf.slice(ws);
          if (rest.startsWith(this.open)) {
            const tokens = this.withCarry(this.take(ws + this.open.length));
            this._reasoningTokens += tokens.length;
            this.out.push({ type: 'reasoning-start', tokens });
            this.openSeen = true;
            this.phase = 'reasoning-lead';
            continue;
          }
          if (!final && this.open.startsWith(rest)) return; // maybe the open tag, split over tokens
          this.phase = 'answer';
          continue;
        }
        case 'reasoning-lead': {
          this.carry.push(...this.take(leadingWs(this.buf)));
          if (!this.openSeen && this.buf.startsWith(this.open)) {
            this.carry.push(...this.take(this.open.length)); // the model repeats the tag the prompt opened
            this.openSeen = true;
            continue;
          }
          if (!final && (this.buf === '' || (!this.openSeen && this.open.startsWith(this.buf)))) return;
          this.phase = 'reasoning';
          continue;
        }
        case 'reasoning': {
          const idx = this.buf.indexOf(this.close);
          if (idx >= 0) {
            const body = this.buf.slice(0, idx).trimEnd();
            this.emitReasoning(body, this.take(body.length));
            this.endReasoning(this.take(idx - body.length + this.close.length), this.forcedClose ? 'budget' : 'model');
            this.forcedClose = false;
            this.phase = 'answer-lead';
            continue;
          }
          if (final) {
            const body = this.buf.trimEnd();
            this.emitReasoning(body, this.take(body.length));
            this.endReasoning(this.take(this.buf.length), 'incomplete');
            this.phase = 'answer';
            continue;
          }
          // hold a possible partial close tag and the whitespace before it (trimmed if the tag follows)
          let hold = partialSuffixLength(this.buf, [this.close]);
          while (hold < this.buf.length && isWs(this.buf[this.buf.length - hold - 1])) hold++;
          const n = this.buf.length - hold;
          if (n > 0) this.emitReasoning(this.buf.slice(0, n), this.take(n));
          return;
        }
        case 'answer-lead': {
          this.carry.push(...this.take(leadingWs(this.buf)));
          if (this.buf === '' && !final) return;
          this.phase = 'answer';
          continue;
        }
        case 'answer': {
          const m = findFirst(this.buf, this.stops);
          if (m) {
            this.emitText(this.buf.slice(0, m.index), this.take(m.index));
            this._stopString = m.needle;
            this.buf = '';
            this.pending = [];
            this.carry = [];
            this.phase = 'stopped';
            return;
          }
          const hold = final ? 0 : partialSuffixLength(this.buf, this.stops);
          const n = this.buf.length - hold;
          if (n > 0) this.emitText(this.buf.slice(0, n), this.take(n));
          if (final) this.emitText('', this.take(0)); // tokens without text (EOG, an unfinished byte sequence)
          return;
        }
        case 'stopped':
          return;
      }
    }
  }
}
