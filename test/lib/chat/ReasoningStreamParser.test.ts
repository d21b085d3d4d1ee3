// The reasoning/answer state machine on adversarial token boundaries: every split of the stream (tags and stop
// strings cut anywhere, multi-byte characters cut between bytes through the real streaming detokenizer) must
// give the same reasoning, answer and token accounting, with no tag or stop-string fragment in any event.
import { describe, expect, it } from 'vitest';
import { ReasoningStreamParser, type ReasoningStreamPart, type ReasoningStreamParserOptions } from '../../../lib/chat/ReasoningStreamParser.js';
import { findFirst, partialSuffixLength } from '../../../lib/chat/stop-strings.js';
import { TokenStreamDecoder } from '../../../lib/tokenizer/index.js';

const TAGS = { open: '<think>', close: '</think>' };

interface Run { parts: ReasoningStreamPart[]; parser: ReasoningStreamParser }

/** Feeds chunks as tokens 0..n-1 and finishes. */
function run(chunks: readonly string[], options: ReasoningStreamParserOptions): Run {
  const parser = new ReasoningStreamParser(options);
  const parts: ReasoningStreamPart[] = [];
  chunks.forEach((c, i) => parts.push(...parser.push(c, i)));
  parts.push(...parser.finish());
  return { parts, parser };
}

const reasoningOf = (parts: ReasoningStreamPart[]) => parts.map((p) => (p.type === 'reasoning-delta' ? p.text : '')).join('');
const textOf = (parts: ReasoningStreamPart[]) => parts.map((p) => (p.type === 'text-delta' ? p.text : '')).join('');
const tokensOf = (parts: ReasoningStreamPart[]) => parts.flatMap((p) => p.tokens);

/** Checks the event grammar: reasoning-start, reasoning-delta*, reasoning-end, then text-delta* only. */
function checkGrammar(parts: ReasoningStreamPart[]): void {
  let state: 'before' | 'in' | 'after' = 'before';
  for (const p of parts) {
    if (p.type === 'reasoning-start') { expect(state).toBe('before'); state = 'in'; }
    else if (p.type === 'reasoning-delta') expect(state).toBe('in');
    else if (p.type === 'reasoning-end') { expect(state).toBe('in'); state = 'after'; }
    else if (state === 'in') throw new Error(`text-delta inside the reasoning: ${JSON.stringify(p)}`);
    else state = 'after';
  }
  expect(state).not.toBe('in');
}

/** Every way to cut `s` into pieces at the given cut points (all subsets of up to `k` cuts). */
function* splits(s: string, k: number): Generator<string[]> {
  const n = s.length;
  function* rec(start: number, left: number, acc: string[]): Generator<string[]> {
    yield [...acc, s.slice(start)];
    if (left === 0) return;
    for (let i = start + 1; i < n; i++) yield* rec(i, left - 1, [...acc, s.slice(start, i)]);
  }
  yield* rec(0, k, []);
}

function mulberry32(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('stop-strings helpers', () => {
  it('finds the earliest needle and the longest partial suffix', () => {
    expect(findFirst('abcSTOPxEND', ['END', 'STOP'])).toEqual({ index: 3, needle: 'STOP' });
    expect(findFirst('abc', ['x'])).toBeUndefined();
    expect(partialSuffixLength('abc</th', ['</think>'])).toBe(4);
    expect(partialSuffixLength('abc<', ['</think>', '<|end'])).toBe(1);
    expect(partialSuffixLength('abc', ['</think>'])).toBe(0);
    expect(partialSuffixLength('ENEN', ['ENENX'])).toBe(4);
  });
});

describe('ReasoningStreamParser', () => {
  const stream = '<think>\nLet me see: 2+2 = 4, café ☕ 🤔\n</think>\n\nThe answer is 4.';
  const reasoning = 'Let me see: 2+2 = 4, café ☕ 🤔';
  const answer = 'The answer is 4.';

  it('separates a model-opened reasoning from the answer for every split into up to 3 pieces', () => {
    let n = 0;
    for (const chunks of splits(stream, 2)) {
      const { parts, parser } = run(chunks, { tags: TAGS });
      checkGrammar(parts);
      expect(reasoningOf(parts)).toBe(reasoning);
      expect(textOf(parts)).toBe(answer);
      expect(parser.reasoning).toBe(reasoning);
      expect(parser.text).toBe(answer);
      for (const p of parts) if ('text' in p) expect(p.text).not.toMatch(/<\/?t?h?i?n?k?>?$|<\/?think/);
      expect(tokensOf(parts)).toEqual(chunks.map((_, i) => i)); // each token once, in order
      expect(parser.reasoningTokens + parser.answerTokens).toBe(chunks.length);
      n++;
    }
    expect(n).toBeGreaterThan(1000);
  });

  it('attributes tokens exactly: tags and their whitespace to the reasoning, the rest to the answer', () => {
    // one token per piece, as Qwen3 emits it: <think> and </think> are single tokens
    const chunks = ['<think>', '\n', 'Hmm', ',', ' ok', '\n', '</think>', '\n\n', 'Yes', '.'];
    const { parts, parser } = run(chunks, { tags: TAGS });
    expect(parts).toEqual([
      { type: 'reasoning-start', tokens: [0] },
      { type: 'reasoning-delta', text: 'Hmm', tokens: [1, 2] },
      { type: 'reasoning-delta', text: ',', tokens: [3] },
      { type: 'reasoning-delta', text: ' ok', tokens: [4] },
      { type: 'reasoning-end', tokens: [5, 6], reasoningTokens: 7, closedBy: 'model' },
      { type: 'text-delta', text: 'Yes', tokens: [7, 8] },
      { type: 'text-delta', text: '.', tokens: [9] },
    ]);
    expect(parser.reasoningTokens).toBe(7);
    expect(parser.answerTokens).toBe(3);
  });

  it('starts inside the reasoning when the prompt opened it, and swallows a repeated open tag', () => {
    const tail = stream.slice('<think>'.length);
    for (const chunks of splits(tail, 2)) {
      const { parts } = run(chunks, { tags: TAGS, startInReasoning: true });
      checkGrammar(parts);
      expect(parts[0]).toEqual({ type: 'reasoning-start', tokens: [] });
      expect(reasoningOf(parts)).toBe(reasoning);
      expect(textOf(parts)).toBe(answer);
    }
    for (const chunks of splits(stream, 2)) {
      const { parts } = run(chunks, { tags: TAGS, startInReasoning: true });
      expect(reasoningOf(parts)).toBe(reasoning);
      expect(textOf(parts)).toBe(answer);
    }
  });

  it('multi-byte characters split between bytes over tokens come out whole (through TokenStreamDecoder)', () => {
    const bytes = new TextEncoder().encode(stream);
    const rand = mulberry32(7);
    for (let trial = 0; trial < 300; trial++) {
      const pieces: Uint8Array[] = [];
      for (let i = 0; i < bytes.length;) {
        const len = 1 + Math.floor(rand() * 4);
        pieces.push(bytes.slice(i, i + len));
        i += len;
      }
      const decoder = new TokenStreamDecoder((id) => pieces[id]!);
      const parser = new ReasoningStreamParser({ tags: TAGS });
      const parts: ReasoningStreamPart[] = [];
      pieces.forEach((_, id) => parts.push(...parser.push(decoder.push(id), id)));
      parts.push(...parser.push(decoder.flush()), ...parser.finish());
      checkGrammar(parts);
      for (const p of parts) if ('text' in p) expect(p.text).not.toContain('\uFFFD');
      expect(reasoningOf(parts)).toBe(reasoning);
      expect(textOf(parts)).toBe(answer);
      expect(tokensOf(parts)).toEqual(pieces.map((_, i) => i));
    }
  });

  it('answers without reasoning are not delayed nor trimmed; lookalike tags stay text', () => {
    const direct = run(['  Hello', ' world'], { tags: TAGS });
    expect(direct.parts).toEqual([
      { type: 'text-delta', text: '  Hello', tokens: [0] },
      { type: 'text-delta', text: ' world', tokens: [1] },
    ]);
    const html = run(['<', 'th', 'ead>', 'x'], { tags: TAGS });
    expect(textOf(html.parts)).toBe('<thead>x');
    expect(html.parts[0]).toEqual({ type: 'text-delta', text: '<thead>', tokens: [0, 1, 2] });
    // a close tag later in an answer is text: reasoning is only recognized at the start
    expect(textOf(run(['A', '<think>', 'B'], { tags: TAGS }).parts)).toBe('A<think>B');
  });

  it('without tags it is a pass-through (leading whitespace kept, one part per token)', () => {
    const { parts, parser } = run([' Once', '', ' upon'], {});
    expect(parts).toEqual([
      { type: 'text-delta', text: ' Once', tokens: [0] },
      { type: 'text-delta', text: ' upon', tokens: [1, 2] },
    ]);
    expect(parser.reasoningTokens).toBe(0);
    expect(parser.answerTokens).toBe(3);
  });

  it('an unclosed reasoning ends with closedBy "incomplete"; a trailing partial tag is reasoning text', () => {
    const { parts, parser } = run(['<think>', 'abc', '</th'], { tags: TAGS });
    expect(parts.at(-1)).toEqual({ type: 'reasoning-end', tokens: [], reasoningTokens: 3, closedBy: 'incomplete' });
    expect(parser.reasoning).toBe('abc</th');
    expect(parser.answerTokens).toBe(0);
  });

  it('marks a close tag injected by a reasoning budget', () => {
    const p = new ReasoningStreamParser({ tags: TAGS, startInReasoning: true });
    p.push('abc', 0);
    expect(p.inReasoning).toBe(true);
    expect(p.reasoningTokens).toBe(1);
    p.expectForcedClose();
    const parts = p.push('</think>', 1);
    expect(parts.at(-1)).toMatchObject({ type: 'reasoning-end', closedBy: 'budget', reasoningTokens: 2 });
    expect(p.inReasoning).toBe(false);
  });

  it('stop strings: never partly emitted, split anywhere, only in the answer, tokens after it dropped', () => {
    const s = '<think>say STOP here</think>Hello ST wor STOP ignored';
    for (const chunks of splits(s, 2)) {
      const { parts, parser } = run(chunks, { tags: TAGS, stop: ['STOP'] });
      expect(reasoningOf(parts)).toBe('say STOP here');
      expect(textOf(parts)).toBe('Hello ST wor ');
      expect(parser.stopped).toBe(true);
      expect(parser.stopString).toBe('STOP');
      for (const p of parts) if (p.type === 'text-delta') expect(p.text).not.toMatch(/S$|ST$|STO$/);
      // tokens of the stop string and after it are in no part, and count as answer tokens
      const emitted = tokensOf(parts);
      expect(emitted).toEqual(emitted.map((_, i) => i));
      expect(parser.reasoningTokens + parser.answerTokens).toBe(chunks.length);
    }
    // a prefix of a stop string at the very end is released by finish()
    expect(textOf(run(['Hi ', 'ST'], { stop: ['STOP'] }).parts)).toBe('Hi ST');
    // the earliest of several stop strings wins
    expect(run(['a<|end|>b\n\nUser:'], { stop: ['\n\nUser:', '<|end|>'] }).parser.text).toBe('a');
  });
});
