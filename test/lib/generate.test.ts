// Sequence.generate(): event stream, usage and timings, sampling, prefix reuse, abort (signal and
// break, also mid-prefill), dispose, busy, context-full, option errors, and the event loop staying free.
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { describe, expect, it } from 'vitest';
import {
  AbortError, BusyError, ContextFullError, DisposedError, InvalidOptionsError, loadModel, type GenerateEvent,
} from '../../lib/index.js';
import { ensureFixture } from '../fixtures/make-tiny-gguf.js';

const small = () => ensureFixture('llama', 'f32');
// Big enough that one 512-token prefill chunk takes a noticeable time (abort latency, event loop).
const medium = () => ensureFixture('llama', 'q8_0', { nEmbd: 512, nLayer: 8, nHead: 8, nHeadKv: 4, headDim: 64, nFf: 1536, nCtxTrain: 4096 });

async function collect(gen: AsyncGenerator<GenerateEvent>): Promise<GenerateEvent[]> {
  const out: GenerateEvent[] = [];
  for await (const ev of gen) out.push(ev);
  return out;
}
type Finish = Extract<GenerateEvent, { type: 'finish' }>;
const finishOf = (evs: GenerateEvent[]) => evs.find((e): e is Finish => e.type === 'finish')!;

describe('Sequence#generate()', () => {
  it('streams start → text-delta… → finish with consistent usage and timings', async () => {
    await using model = await loadModel({ path: small() });
    await using ctx = await model.createContext({ contextSize: 256, threads: 1 });
    const seq = ctx.acquireSequence();
    const evs = await collect(seq.generate('Once upon a time', { maxTokens: 20, stopAtEog: false }));
    expect(evs[0]!.type).toBe('start');
    const fin = finishOf(evs);
    expect(evs.at(-1)).toBe(fin);
    expect(fin.finishReason).toBe('length');
    expect(fin.tokens).toHaveLength(20);
    const deltas = evs.filter((e) => e.type === 'text-delta') as Extract<GenerateEvent, { type: 'text-delta' }>[];
    expect(deltas.flatMap((d) => d.tokens)).toEqual(fin.tokens);
    expect(deltas.map((d) => d.text).join('')).toBe(fin.text);
    expect(fin.text).toBe(model.detokenize(fin.tokens));
    const promptTokens = model.tokenize('Once upon a time');
    expect(fin.usage).toEqual({ promptTokens: promptTokens.length, cachedPromptTokens: 0, completionTokens: 20, reasoningTokens: 0, answerTokens: 20, totalTokens: promptTokens.length + 20 });
    expect(fin.timings.prefillTokensPerSecond).toBeGreaterThan(0);
    expect(fin.timings.decodeTokensPerSecond).toBeGreaterThan(0);
    expect(fin.timings.timeToFirstTokenMs).toBeGreaterThan(0);
    expect(fin.kv.logicalTokens).toBe(promptTokens.length + 19); // the last sampled token is not evaluated
    expect(fin.kv.bytesUsed).toBeGreaterThan(0);
    expect(fin.kv.bytesAllocated).toBeGreaterThanOrEqual(fin.kv.bytesUsed);
  });

  it('is deterministic for a seed and varies with it; greedy ignores the seed', async () => {
    await using model = await loadModel({ path: small() });
    await using ctx = await model.createContext({ contextSize: 256, threads: 1 });
    const seq = ctx.acquireSequence();
    const run = async (sampling: object) => finishOf(await collect(seq.generate('The cat', { maxTokens: 24, stopAtEog: false, sampling }))).tokens;
    const a = await run({ temperature: 1.2, seed: 42, topK: 0, topP: 1, minP: 0 });
    const b = await run({ temperature: 1.2, seed: 42, topK: 0, topP: 1, minP: 0 });
    const c = await run({ temperature: 1.2, seed: 43, topK: 0, topP: 1, minP: 0 });
    expect(a).toEqual(b);
    expect(a).not.toEqual(c);
    expect(await run({ temperature: 0, seed: 1 })).toEqual(await run({ temperature: 0, seed: 2 }));
  });

  it('reuses the common prompt prefix from the previous call', async () => {
    await using model = await loadModel({ path: small() });
    await using ctx = await model.createContext({ contextSize: 256, threads: 1 });
    const seq = ctx.acquireSequence();
    const first = finishOf(await collect(seq.generate('Once upon a time there was', { maxTokens: 8, stopAtEog: false })));
    const again = finishOf(await collect(seq.generate('Once upon a time there was', { maxTokens: 8, stopAtEog: false })));
    expect(again.usage.cachedPromptTokens).toBe(again.usage.promptTokens - 2); // (the last two are evaluated again: a prompt chunk)
    expect(again.tokens).toEqual(first.tokens);
  });

  it('clear() empties and frees the cache off the event loop; what is called meanwhile waits or is refused', async () => {
    await using model = await loadModel({ path: small() });
    await using ctx = await model.createContext({ contextSize: 256, threads: 1 });
    const seq = ctx.acquireSequence();
    const first = finishOf(await collect(seq.generate('Once upon a time there was', { maxTokens: 8, stopAtEog: false })));
    expect(seq.memory().bytesUsed).toBeGreaterThan(0);
    const clearing = seq.clear();
    expect(seq.tokens).toEqual([]);  // at once
    expect(() => seq.memory()).toThrow(BusyError);  // until the rewind is done
    expect(() => seq.heldPositions(0, 0)).toThrow(/being cleared/);
    const again = collect(seq.generate('Once upon a time there was', { maxTokens: 8, stopAtEog: false }));  // waits for it
    await clearing;
    const fin = finishOf(await again);
    expect(fin.usage.cachedPromptTokens).toBe(0);
    expect(fin.tokens).toEqual(first.tokens);
    await Promise.all([seq.clear(), seq.clear()]);  // a second clear waits for the first
    const m = seq.memory();
    expect(m.logicalTokens).toBe(0);
    expect(m.residentTokens).toBe(0);
    expect(m.breakdown).toMatchObject({ keys: 0, values: 0, positions: 0 });
    expect(m.bytesUsed).toBe(m.breakdown.metadata);  // (the heads' segment tables: a few bytes per head)
    expect(m.bytesUsed).toBeLessThan(1024);
    expect(seq._native.nTokens()).toBe(0);
    // a generation in progress refuses it
    const g = seq.generate('Once upon a time', { maxTokens: 20, stopAtEog: false });
    await g.next();
    await expect(seq.clear()).rejects.toBeInstanceOf(BusyError);
    await g.return(undefined);
  });

  it('finishes with context-full when the context is exhausted', async () => {
    await using model = await loadModel({ path: small() });
    await using ctx = await model.createContext({ contextSize: 24, threads: 1 });
    const seq = ctx.acquireSequence();
    const fin = finishOf(await collect(seq.generate('Once upon a time', { maxTokens: 100, stopAtEog: false })));
    expect(fin.finishReason).toBe('context-full');
    expect(fin.usage.totalTokens).toBeLessThanOrEqual(24);
  });

  it('break out of for-await stops the generation and frees the sequence', async () => {
    await using model = await loadModel({ path: small() });
    await using ctx = await model.createContext({ contextSize: 256, threads: 1 });
    const seq = ctx.acquireSequence();
    let n = 0;
    for await (const ev of seq.generate('Once upon a time', { maxTokens: 100, stopAtEog: false })) {
      if (ev.type === 'text-delta' && ++n === 3) break;
    }
    const fin = finishOf(await collect(seq.generate('Hello', { maxTokens: 2, stopAtEog: false })));
    expect(fin.tokens).toHaveLength(2);
  });

  it('an AbortSignal stops a long prefill promptly, between and inside chunks', async () => {
    await using model = await loadModel({ path: medium() });
    await using ctx = await model.createContext({ contextSize: 4096, threads: 2, batchSize: 512 });
    const seq = ctx.acquireSequence();
    const prompt = Array.from({ length: 3000 }, (_, i) => 300 + (i % 200));
    // measure one chunk first, to know what "promptly" means on this machine
    const t0 = performance.now();
    finishOf(await collect(seq.generate(prompt.slice(0, 512), { maxTokens: 1 })));
    const chunkMs = performance.now() - t0;
    await seq.clear();

    const ac = new AbortController();
    const started = performance.now();
    let abortedAt = 0;
    setTimeout(() => { abortedAt = performance.now(); ac.abort(); }, Math.max(5, chunkMs / 3));
    const evs = await collect(seq.generate(prompt, { maxTokens: 10, signal: ac.signal }));
    const fin = finishOf(evs);
    const stoppedAfter = performance.now() - abortedAt;
    expect(fin.finishReason).toBe('aborted');
    expect(fin.tokens).toHaveLength(0);
    expect(abortedAt).toBeGreaterThan(started);
    // stops within a fraction of a chunk (the native side checks between layers), not after the whole prompt
    expect(stoppedAfter).toBeLessThan(Math.max(chunkMs * 0.8, 50));
    // the sequence is usable afterwards and holds no half-evaluated chunk, in any layer
    const held = seq.memory().logicalTokens;
    expect(held % 512).toBe(0);
    expect(seq.tokens).toHaveLength(held);
    for (let layer = 0; layer < 8; layer++) expect(Array.from(seq.heldPositions(layer, 0))).toEqual(Array.from({ length: held }, (_, i) => i));
    const again = finishOf(await collect(seq.generate(prompt.slice(0, 8), { maxTokens: 2 })));
    expect(again.tokens).toHaveLength(2);
  });

  it('an AbortSignal aborted between decode steps stops at the next step', async () => {
    await using model = await loadModel({ path: small() });
    await using ctx = await model.createContext({ contextSize: 256, threads: 1 });
    const seq = ctx.acquireSequence();
    const ac = new AbortController();
    const evs: GenerateEvent[] = [];
    for await (const ev of seq.generate('Once upon a time', { maxTokens: 100, stopAtEog: false, signal: ac.signal })) {
      evs.push(ev);
      if (ev.type === 'text-delta') ac.abort(); // while no eval is in flight
    }
    const fin = finishOf(evs);
    expect(fin.finishReason).toBe('aborted');
    expect(fin.tokens).toHaveLength(1);
  });

  it('seq.abort() stops a generation between steps and inside a step: finishReason aborted, nothing thrown', async () => {
    await using model = await loadModel({ path: medium() });
    await using ctx = await model.createContext({ contextSize: 4096, threads: 2, batchSize: 512 });
    const seq = ctx.acquireSequence();
    seq.abort(); // idle: does nothing (no pending abort for the next call)
    const evs: GenerateEvent[] = [];
    let deltas = 0;
    for await (const ev of seq.generate('Once upon a time', { maxTokens: 100, stopAtEog: false })) {
      evs.push(ev);
      if (ev.type === 'text-delta' && ++deltas === 3) seq.abort(); // between steps
    }
    expect(finishOf(evs).finishReason).toBe('aborted');
    expect(finishOf(evs).tokens).toHaveLength(3);
    // inside an evaluation: after the first prefill chunk, a timer aborts while the second chunk is in flight
    await seq.clear();
    const prompt = Array.from({ length: 2500 }, (_, i) => 300 + (i % 200));
    const evs2: GenerateEvent[] = [];
    for await (const ev of seq.generate(prompt, { maxTokens: 10 })) {
      evs2.push(ev);
      if (ev.type === 'prefill-progress' && ev.processed === 512) setTimeout(() => seq.abort(), 0);
    }
    const fin = finishOf(evs2);
    expect(fin.finishReason).toBe('aborted');
    expect(fin.tokens).toHaveLength(0);
    expect(evs2.filter((e) => e.type === 'prefill-progress')).toHaveLength(1); // (stopped inside the second chunk)
    expect(seq.tokens).toHaveLength(seq.memory().logicalTokens);
    expect(seq.memory().logicalTokens).toBe(512);
  });

  it('penalties see the tokens the sequence holds: the same prompt twice gives the same tokens', async () => {
    await using model = await loadModel({ path: small() });
    await using ctx = await model.createContext({ contextSize: 256, threads: 1 });
    const seq = ctx.acquireSequence();
    const sampling = { temperature: 0, repeatPenalty: 1.8, penaltyLastN: 64 };
    const run = async () => finishOf(await collect(seq.generate('Once upon a time', { maxTokens: 30, stopAtEog: false, sampling }))).tokens;
    const first = await run();
    const again = await run(); // the cache keeps the prompt; the first answer's tokens are gone from it
    expect(again).toEqual(first);
  });

  it('a prompt longer than the context is a ContextFullError before anything changes', async () => {
    await using model = await loadModel({ path: small() });
    await using ctx = await model.createContext({ contextSize: 64, threads: 1 });
    const seq = ctx.acquireSequence();
    finishOf(await collect(seq.generate('Once upon a time', { maxTokens: 4, stopAtEog: false })));
    const held = [...seq.tokens];
    const gen = seq.generate(Array.from({ length: 80 }, (_, i) => 300 + i));
    await expect(gen.next()).rejects.toBeInstanceOf(ContextFullError); // (no 'start' event first)
    expect(seq.tokens).toEqual(held);
    expect(seq.memory().logicalTokens).toBe(held.length);
  });

  it('timings count the engine, not the consumer: a slow loop body leaves decodeMs alone', async () => {
    await using model = await loadModel({ path: small() });
    await using ctx = await model.createContext({ contextSize: 256, threads: 1 });
    const seq = ctx.acquireSequence();
    const evs: GenerateEvent[] = [];
    const t0 = performance.now();
    for await (const ev of seq.generate('Once upon a time', { maxTokens: 8, stopAtEog: false })) {
      evs.push(ev);
      await new Promise((r) => setTimeout(r, 40)); // 40 ms per event in the consumer
    }
    const wall = performance.now() - t0;
    const fin = finishOf(evs);
    expect(wall).toBeGreaterThan(40 * 8);
    expect(fin.timings.decodeMs + fin.timings.prefillMs).toBeLessThan(wall - 40 * 6);
    expect(fin.timings.timeToFirstTokenMs).toBeGreaterThanOrEqual(fin.timings.prefillMs);
  });

  it('sync calls give typed errors: bad heldPositions arguments, memory() while an evaluation is in flight', async () => {
    await using model = await loadModel({ path: medium() });
    await using ctx = await model.createContext({ contextSize: 2048, threads: 1 });
    const seq = ctx.acquireSequence();
    expect(() => seq.heldPositions(8, 0)).toThrow(InvalidOptionsError);
    expect(() => seq.heldPositions(0, 1.5)).toThrow(/head in \[0, 4\)/);
    const pending = seq.evaluate(Array.from({ length: 1500 }, (_, i) => 300 + (i % 200)));
    expect(() => seq.memory()).toThrow(BusyError);
    await pending;
    expect(seq.memory().logicalTokens).toBe(1500);
  });

  it('acquireSequence: BusyError when all are in use; with options it waits its turn, aborts, or fails with the context', async () => {
    await using model = await loadModel({ path: small() });
    const ctx = await model.createContext({ contextSize: 64, threads: 1, sequences: 1 });
    const first = ctx.acquireSequence();
    expect(() => ctx.acquireSequence()).toThrow(BusyError);
    const order: string[] = [];
    const a = ctx.acquireSequence({}).then((s) => { order.push('a'); return s; });
    const ac = new AbortController();
    const b = ctx.acquireSequence({ signal: ac.signal });
    const c = ctx.acquireSequence({}).then((s) => { order.push('c'); return s; });
    expect(() => ctx.acquireSequence()).toThrow(BusyError); // (others are waiting)
    ac.abort();
    await expect(b).rejects.toBeInstanceOf(AbortError);
    await first.dispose();
    const sa = await a;
    expect(order).toEqual(['a']);
    finishOf(await collect(sa.generate('Hi', { maxTokens: 2, stopAtEog: false }))); // a working sequence
    await sa.dispose();
    const sc = await c;
    expect(order).toEqual(['a', 'c']);
    const d = ctx.acquireSequence({});
    await ctx.dispose();
    await expect(d).rejects.toBeInstanceOf(DisposedError);
    expect(sc.disposed).toBe(true);
  });

  it('model.tokenizeAsync gives tokenize\'s ids', async () => {
    await using model = await loadModel({ path: small() });
    const text = 'Once upon a time there was a little girl. '.repeat(600);
    expect(await model.tokenizeAsync(text)).toEqual(model.tokenize(text));
    expect(await model.tokenizeAsync('Hi', { addBos: false })).toEqual(model.tokenize('Hi', { addBos: false }));
  });

    it('loadModel({ threads }) is the contexts\' default; createContext({ threads }) overrides it', async () => {
    await using model = await loadModel({ path: small(), threads: 1 });
    await using a = await model.createContext({ contextSize: 64 });
    await using b = await model.createContext({ contextSize: 64, threads: 2 });
    expect([a.threads, b.threads]).toEqual([1, 2]);
    await expect(loadModel({ path: small(), threads: 0 })).rejects.toBeInstanceOf(InvalidOptionsError);
  });

  it('statsInterval: a stats event at every multiple of N generated tokens, with the decode speed and the KV memory', async () => {
    await using model = await loadModel({ path: small() });
    await using ctx = await model.createContext({ contextSize: 256, threads: 1 });
    const seq = ctx.acquireSequence();
    const prompt = model.tokenize('Once upon a time');
    const evs = await collect(seq.generate('Once upon a time', { maxTokens: 25, stopAtEog: false, statsInterval: 10 }));
    const stats = evs.filter((e): e is Extract<GenerateEvent, { type: 'stats' }> => e.type === 'stats');
    expect(stats.map((e) => e.generatedTokens)).toEqual([10, 20]);
    expect(stats.map((e) => e.kv.logicalTokens)).toEqual([prompt.length + 10, prompt.length + 20]);
    for (const e of stats) expect(e.decodeTokensPerSecond).toBeGreaterThan(0);
    // the deltas before a stats event hold exactly its generated tokens
    const at = evs.indexOf(stats[0]!);
    expect(evs.slice(0, at).flatMap((e) => (e.type === 'text-delta' ? e.tokens : [])).length).toBeLessThanOrEqual(10);
    expect(evs.filter((e) => e.type === 'stats')).toHaveLength(2);
    expect((await collect(seq.generate('Once upon a time', { maxTokens: 25, stopAtEog: false }))).some((e) => e.type === 'stats')).toBe(false);
  });

  it('rejects a second concurrent generation with BusyError', async () => {
    await using model = await loadModel({ path: small() });
    await using ctx = await model.createContext({ contextSize: 256, threads: 1 });
    const seq = ctx.acquireSequence();
    const g1 = seq.generate('Once upon a time', { maxTokens: 50, stopAtEog: false });
    await g1.next();
    await expect(seq.generate('Hi').next()).rejects.toBeInstanceOf(BusyError);
    await g1.return(undefined);
  });

  it('use after dispose is a DisposedError; dispose is idempotent', async () => {
    const model = await loadModel({ path: small() });
    const ctx = await model.createContext({ contextSize: 64, threads: 1 });
    const seq = ctx.acquireSequence();
    await seq.dispose();
    await seq.dispose();
    await expect(seq.generate('Hi').next()).rejects.toBeInstanceOf(DisposedError);
    await model.dispose();
    expect(ctx.disposed).toBe(true);
    expect(() => ctx.acquireSequence()).toThrow(DisposedError);
    await expect(model.createContext()).rejects.toBeInstanceOf(DisposedError);
    expect(() => model.tokenize('x')).toThrow(DisposedError);
  });

  for (const [name, kv, at] of [
    ['paused at start, an evicting cache', { eviction: { policy: 'lazy', capacity: 48, window: 16 } }, 'start'],
    ['mid-generation, a plain cache', undefined, 'text-delta'],
  ] as const) {
    it(`disposing a sequence ${name}: the generation finishes as aborted`, async () => {
      await using model = await loadModel({ path: small() });
      await using ctx = await model.createContext({ contextSize: 256, threads: 1, ...(kv ? { kv } : {}) });
      const seq = ctx.acquireSequence();
      const evs: GenerateEvent[] = [];
      for await (const ev of seq.generate('Once upon a time', { maxTokens: 100, stopAtEog: false })) {
        evs.push(ev);
        if (ev.type === at) await seq.dispose();
      }
      expect(finishOf(evs).finishReason).toBe('aborted');
      if (at === 'start') expect(finishOf(evs).tokens).toHaveLength(0);
    });
  }

  it('disposing a sequence while its cache is rewound (before start): aborted, no untyped error', async () => {
    await using model = await loadModel({ path: small() });
    await using ctx = await model.createContext({ contextSize: 256, threads: 1 });
    const seq = ctx.acquireSequence();
    const gen = seq.generate('Once upon a time', { maxTokens: 10, stopAtEog: false });
    const first = gen.next();
    await seq.dispose();
    const evs: GenerateEvent[] = [(await first).value as GenerateEvent];
    for await (const ev of gen) evs.push(ev);
    expect(finishOf(evs).finishReason).toBe('aborted');
  });

  it('an already aborted signal is an AbortError', async () => {
    await using model = await loadModel({ path: small() });
    await using ctx = await model.createContext({ contextSize: 64, threads: 1 });
    const seq = ctx.acquireSequence();
    await expect(seq.generate('Hi', { signal: AbortSignal.abort() }).next()).rejects.toBeInstanceOf(AbortError);
  });

  it('bad options name the option, the expectation and the value', async () => {
    await using model = await loadModel({ path: small() });
    await using ctx = await model.createContext({ contextSize: 64, threads: 1 });
    const seq = ctx.acquireSequence();
    const err = await seq.generate('Hi', { maxTokens: -1 }).next().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidOptionsError);
    expect((err as Error).message).toMatch(/generate\.maxTokens/);
    expect((err as Error).message).toMatch(/received -1/);
    const typo = await seq.generate('Hi', { maxToken: 3 } as never).next().catch((e: unknown) => e);
    expect((typo as Error).message).toMatch(/unknown option "maxToken" \(did you mean "maxTokens"\?\)/);
    await expect(model.createContext({ contextSize: 0 })).rejects.toThrow(/createContext\.contextSize/);
    await expect(loadModel({ path: 5 } as never)).rejects.toThrow(/loadModel\.path/);
    await expect(seq.generate([1, 1e9]).next()).rejects.toThrow(/not a valid id/);
  });

  it('never blocks the event loop: p99 delay under 20 ms while generating', async () => {
    await using model = await loadModel({ path: medium() });
    await using ctx = await model.createContext({ contextSize: 2048, threads: 2, batchSize: 512 });
    const seq = ctx.acquireSequence();
    const h = monitorEventLoopDelay({ resolution: 1 });
    h.enable();
    const prompt = Array.from({ length: 1024 }, (_, i) => 300 + (i % 200));
    const fin = finishOf(await collect(seq.generate(prompt, { maxTokens: 64, stopAtEog: false })));
    h.disable();
    expect(fin.tokens).toHaveLength(64);
    const p99ms = h.percentile(99) / 1e6;
    console.log(`event loop delay while generating: p50 ${(h.percentile(50) / 1e6).toFixed(2)} ms, p99 ${p99ms.toFixed(2)} ms, max ${(h.max / 1e6).toFixed(2)} ms`);
    expect(p99ms).toBeLessThan(20);
  });
});
