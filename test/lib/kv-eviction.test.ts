// Eviction policies through the public API: the zod union matches the native registry, C > W is
// enforced for lazy, three tiers (full / evict / stream) come from one configuration, heads stay within
// budget while generating, and finish events report evicted tokens.
import { describe, expect, it } from 'vitest';
import { EVICTION_POLICIES, listKvPolicies, loadModel, type GenerateEvent, type Sequence } from '../../lib/index.js';
import { ensureFixture } from '../fixtures/make-tiny-gguf.js';

const fixture = () => ensureFixture('llama', 'f32', { nLayer: 4 });

describe('kv.eviction', () => {
  it('the TS policy list equals the native registry', () => {
    expect(listKvPolicies().map((p) => p.name).sort()).toEqual([...EVICTION_POLICIES].sort());
  });

  it('rejects lazy with C <= W, naming the rule', async () => {
    await using model = await loadModel({ path: fixture() });
    await expect(model.createContext({ kv: { eviction: { policy: 'lazy', capacity: 64, window: 64 } } })).rejects.toThrow(/capacity > window \(C > W\)/);
  });

  for (const policy of EVICTION_POLICIES) {
    it(`${policy}: every evicting head stays within budget + period while generating`, async () => {
      await using model = await loadModel({ path: fixture() });
      const capacity = 48, window = 16;
      await using ctx = await model.createContext({
        contextSize: 512, threads: 1,
        kv: { eviction: policy === 'tova' ? { policy, capacity } : policy === 'streaming' ? { policy, capacity, protect: 4 } : policy === 'snapkv' || policy === 'rkv' ? { policy, capacity, window: 8, interval: window } : { policy, capacity, window } },
      });
      expect(ctx.effective.kv.heads.evictHeads).toBe(8);
      const seq = ctx.acquireSequence();
      let fin: Extract<GenerateEvent, { type: 'finish' }> | undefined;
      for await (const ev of seq.generate('Once upon a time there was a little girl', { maxTokens: 200, stopAtEog: false })) if (ev.type === 'finish') fin = ev;
      const m = seq.memory({ detail: 'heads' });
      for (const r of m.heads!.residentTokens) expect(r).toBeLessThanOrEqual(capacity + window);
      expect(fin!.kv.evictedTokens).toBeGreaterThan(0);
      expect(fin!.kv.compactions).toBeGreaterThan(0);
    });
  }

  it('three tiers from one configuration: full / evict / stream by profile rank', async () => {
    await using model = await loadModel({ path: fixture() });
    const profile = [[0.9, 0.2], [0.3, 0.8], [0.1, 0.7], [0.6, 0.4]];
    await using ctx = await model.createContext({
      contextSize: 256, threads: 1,
      kv: { heads: { profile, sparsity: 0.25, full: 0.25, stream: { sinks: 2, recent: 8 } }, eviction: { policy: 'lazy', capacity: 40, window: 16 } },
    });
    expect(ctx.effective.kv.heads.retention).toEqual([['full', 'stream'], ['evict', 'full'], ['stream', 'evict'], ['evict', 'evict']]);
    expect([ctx.effective.kv.heads.fullHeads, ctx.effective.kv.heads.evictHeads, ctx.effective.kv.heads.streamHeads]).toEqual([2, 4, 2]);
  });
});

describe('aborts keep what the cache held', () => {
  // A chunk interrupted between layers is taken back out while nothing older moved; once a layer has evicted,
  // trimmed or re-scored older tokens the chunk finishes and the abort takes effect before the next one. Either
  // way no head holds a position the sequence does not, and generating again continues as an uninterrupted run.
  const medium = () => ensureFixture('llama', 'q8_0', { nEmbd: 512, nLayer: 8, nHead: 8, nHeadKv: 4, headDim: 64, nFf: 1536, nCtxTrain: 4096 });
  const configs = {
    'lazy eviction': { eviction: { policy: 'lazy', capacity: 256, window: 64 } },
    'head-selective stream + rot2': { heads: { profile: Array.from({ length: 8 }, (_, l) => Array.from({ length: 4 }, (_, h) => ((l * 4 + h) * 37 % 100) / 100)), sparsity: 0.5, stream: { sinks: 16, recent: 128 } }, storage: { key: 'rot2', value: 'rot2' } },
  } as const;
  for (const [name, kv] of Object.entries(configs)) {
    it(`${name}: an abort during the prefill`, async () => {
      await using model = await loadModel({ path: medium() });
      await using ctx = await model.createContext({ contextSize: 2048, threads: 2, batchSize: 256, sequences: 2, kv });
      const prompt = Array.from({ length: 1400 }, (_, i) => 300 + ((i * 7) % 200));
      // (with a controller: it aborts while the third chunk is in flight, from a timer set after the second)
      const run = async (seq: Sequence, ac?: AbortController) => {
        let fin: Extract<GenerateEvent, { type: 'finish' }> | undefined;
        for await (const ev of seq.generate(prompt, { maxTokens: 12, stopAtEog: false, ...(ac ? { signal: ac.signal } : {}) })) {
          if (ev.type === 'finish') fin = ev;
          if (ac && ev.type === 'prefill-progress' && ev.processed === 512) setTimeout(() => ac.abort(), 0);
        }
        return fin!;
      };
      const ref = await run(ctx.acquireSequence());
      const seq = ctx.acquireSequence();
      const aborted = await run(seq, new AbortController());
      expect(aborted.finishReason).toBe('aborted');
      // where in the third chunk the abort lands depends on the machine's load: in its first layer, before any
      // layer changed older tokens, the chunk is taken back out (512 held); once one had (an evicting layer's
      // observation; stream trims and rot2 flushes), it runs to its end and the prefill stops before the fourth
      // (768). Which layers revert and which run through is pinned down by the C++ test ("kv: an aborted chunk…").
      const held = seq.memory().logicalTokens;
      expect([512, 768]).toContain(held);
      expect(seq.tokens).toEqual(prompt.slice(0, held));
      for (let layer = 0; layer < 8; layer++) {
        for (let head = 0; head < 4; head++) for (const p of seq.heldPositions(layer, head)) expect(p).toBeLessThan(held);
      }
      const resumed = await run(seq);
      expect(resumed.usage.cachedPromptTokens).toBe(held);
      expect(resumed.tokens).toEqual(ref.tokens);
    });
  }
});

describe('prefix reuse with an evicting cache', () => {
  it('the same prompt again, after a generation that evicted nothing, evicts as a fresh sequence does', async () => {
    // the continuation re-evaluates the prompt's last tokens as a prompt chunk, so the decode steps (lazy evicts
    // every W of them) count from the prompt's end as in a fresh sequence
    await using model = await loadModel({ path: fixture() });
    await using ctx = await model.createContext({ contextSize: 512, threads: 1, sequences: 2, kv: { eviction: { policy: 'lazy', capacity: 48, window: 16 } } });
    const prompt = 'Once upon a time there was a little girl';
    const gen = async (seq: Sequence, maxTokens: number) => {
      let fin: Extract<GenerateEvent, { type: 'finish' }> | undefined;
      for await (const ev of seq.generate(prompt, { maxTokens, stopAtEog: false })) if (ev.type === 'finish') fin = ev;
      return fin!;
    };
    const reused = ctx.acquireSequence(), fresh = ctx.acquireSequence();
    expect((await gen(reused, 5)).kv.evictedTokens).toBe(0);
    const a = await gen(reused, 80), b = await gen(fresh, 80);
    expect(a.usage.cachedPromptTokens).toBeGreaterThan(0);
    expect(b.kv.evictedTokens).toBeGreaterThan(0);
    for (let layer = 0; layer < 4; layer++) for (let head = 0; head < 2; head++) expect(reused.heldPositions(layer, head)).toEqual(fresh.heldPositions(layer, head));
    expect(a.tokens).toEqual(b.tokens);
  });
});

describe('kv-compaction events', () => {
  it('report evicted tokens step by step; they add up to the memory counter; plain caches emit none', async () => {
    await using model = await loadModel({ path: fixture() });
    await using ctx = await model.createContext({ contextSize: 512, threads: 1, kv: { eviction: { policy: 'lazy', capacity: 40, window: 16, alpha: 1e-4 } } });
    const seq = ctx.acquireSequence();
    const evs: GenerateEvent[] = [];
    for await (const ev of seq.generate('Once upon a time', { maxTokens: 120, stopAtEog: false })) evs.push(ev);
    const comp = evs.filter((e): e is Extract<GenerateEvent, { type: 'kv-compaction' }> => e.type === 'kv-compaction');
    const fin = evs.at(-1) as Extract<GenerateEvent, { type: 'finish' }>;
    expect(comp.length).toBeGreaterThan(0);
    expect(comp.reduce((s, e) => s + e.evictedTokens, 0)).toBe(fin.kv.evictedTokens);
    for (const e of comp) expect(e.residentTokens).toBeLessThanOrEqual(8 * 40);
    expect(fin.timings.compactionMs).toBeGreaterThanOrEqual(0);
    await using plain = await model.createContext({ contextSize: 512, threads: 1 });
    const s2 = plain.acquireSequence();
    for await (const ev of s2.generate('Once upon a time', { maxTokens: 20, stopAtEog: false })) expect(ev.type).not.toBe('kv-compaction');
  });
});

describe('lazy per-query-head reference mode', () => {
  it('keeps one token set per query head (g× the memory) and stays within budget', async () => {
    await using model = await loadModel({ path: fixture() });
    const G = model.info.nHead / model.info.nHeadKv;
    const run = async (perQueryHead: boolean) => {
      await using ctx = await model.createContext({ contextSize: 512, threads: 1, kv: { eviction: { policy: 'lazy', capacity: 40, window: 16, perQueryHead } } });
      const seq = ctx.acquireSequence();
      let fin: Extract<GenerateEvent, { type: 'finish' }> | undefined;
      for await (const ev of seq.generate('Once upon a time', { maxTokens: 100, stopAtEog: false })) if (ev.type === 'finish') fin = ev;
      return { fin: fin!, heads: seq.memory({ detail: 'heads' }).heads! };
    };
    const group = await run(false), perHead = await run(true);
    expect(group.heads.residentTokens.length).toBe(model.info.nLayer * model.info.nHeadKv);
    expect(perHead.heads.residentTokens.length).toBe(model.info.nLayer * model.info.nHead);
    for (const r of perHead.heads.residentTokens) expect(r).toBeLessThanOrEqual(40 + 16);
    expect(perHead.fin.kv.bytesUsed).toBeGreaterThan(group.fin.kv.bytesUsed * (G - 0.5));
    expect(perHead.fin.tokens).toHaveLength(100);
  });
});

describe('storage codecs on evicting heads (ALGORITHMS.md §6.2 C1 a, C5, C7)', () => {
  it('rot2 + lazy: evicting heads hold 2-bit codes, stay within budget, and evict quantized tokens', async () => {
    await using model = await loadModel({ path: fixture() });
    const capacity = 96, window = 16;
    await using ctx = await model.createContext({
      contextSize: 512, threads: 1,
      kv: { storage: { key: 'rot2', value: 'rot2', stagingTokens: 16, protectFirst: 4, permutation: 'none' }, eviction: { policy: 'lazy', capacity, window, protect: 4 } },
    });
    const seq = ctx.acquireSequence();
    let fin: Extract<GenerateEvent, { type: 'finish' }> | undefined;
    let maxQuantized = 0;
    for await (const ev of seq.generate('Once upon a time there was a little girl', { maxTokens: 300, stopAtEog: false })) {
      if (ev.type === 'finish') fin = ev;
      if (ev.type === 'kv-compaction') maxQuantized = Math.max(maxQuantized, seq.memory().quantizedTokens ?? 0);
    }
    const m = seq.memory({ detail: 'heads' });
    for (const r of m.heads!.residentTokens) expect(r).toBeLessThanOrEqual(capacity + window);
    expect(fin!.kv.evictedTokens).toBeGreaterThan(0);
    expect(m.quantizedTokens).toBeGreaterThan(8 * (capacity - 2 * window - 16));  // most of each head's budget is codes
    expect(m.breakdown.codes).toBeGreaterThan(0);
    // the same budget in f16 holds the same tokens in several times the bytes
    await using ctx16 = await model.createContext({ contextSize: 512, threads: 1, kv: { eviction: { policy: 'lazy', capacity, window, protect: 4 } } });
    const seq16 = ctx16.acquireSequence();
    for await (const ev of seq16.generate('Once upon a time there was a little girl', { maxTokens: 300, stopAtEog: false })) void ev;
    const m16 = seq16.memory();
    expect(m.residentTokens).toBe(m16.residentTokens);
    expect(m.breakdown.keys + m.breakdown.values).toBeLessThan((m16.breakdown.keys + m16.breakdown.values) / 2);
  });

  it('refuses block codecs (KIVI) and key-scoring policies with eviction, naming the reason', async () => {
    await using model = await loadModel({ path: fixture() });
    await expect(model.createContext({ kv: { storage: { key: 'kivi2', value: 'kivi2' }, eviction: { policy: 'lazy', capacity: 96, window: 16 } } }))
      .rejects.toThrow(/per-token eviction cannot split/);
    await expect(model.createContext({ kv: { storage: { key: 'rot2', value: 'rot2' }, eviction: { policy: 'snapkv', capacity: 96 } } }))
      .rejects.toThrow(/snapkv scores from f16 keys/);
  });
});
