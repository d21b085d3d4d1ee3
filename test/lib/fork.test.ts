// seq.copyFrom / seq.fork ("compress once, ask many"): a sequence that evaluated a long prompt under a
// compressing cache (lazy eviction; stream heads + rot2) is copied; the copy generates exactly what a sequence
// that went through the same calls itself generates — tokens, held positions, memory report — and owns its
// memory. Plus the refusals: itself, another context, busy, no free sequence.
import { describe, expect, it } from 'vitest';
import { BusyError, InvalidOptionsError, loadModel, type GenerateEvent, type KvOptions, type Sequence } from '../../lib/index.js';
import { ensureFixture } from '../fixtures/make-tiny-gguf.js';

const fixture = () => ensureFixture('llama', 'q8_0', { nEmbd: 256, nLayer: 4, nHead: 8, nHeadKv: 4, headDim: 32, nFf: 512, nCtxTrain: 2048 });
type Finish = Extract<GenerateEvent, { type: 'finish' }>;
async function run(seq: Sequence, prompt: number[], maxTokens: number): Promise<Finish> {
  let fin: Finish | undefined;
  // (a presence penalty over the whole history: the tokens come out right only if a copy took over the token history too)
  for await (const ev of seq.generate(prompt, { maxTokens, stopAtEog: false, sampling: { presencePenalty: 5, penaltyLastN: -1 } })) if (ev.type === 'finish') fin = ev;
  return fin!;
}
// The report's token counts and payload bytes (the metadata also counts spare capacity of tables, which a copy
// does not take over)
const payload = (m: ReturnType<Sequence['memory']>) => ({
  logical: m.logicalTokens, resident: m.residentTokens, quantized: m.quantizedTokens, keys: m.breakdown.keys, values: m.breakdown.values,
  positions: m.breakdown.positions, codes: m.breakdown.codes, scales: m.breakdown.scales, staging: m.breakdown.staging,
  evicted: m.evictedTokens, compactions: m.compactions,
});
const doc = Array.from({ length: 600 }, (_, i) => 300 + ((i * 13) % 250));
const question = (k: number) => [...doc, ...Array.from({ length: 20 }, (_, i) => 50 + ((i * (k + 3)) % 90))];

const configs: Record<string, KvOptions> = {
  'lazy eviction': { eviction: { policy: 'lazy', capacity: 160, window: 32 } },
  'stream heads + rot2': { heads: { profile: Array.from({ length: 4 }, (_, l) => Array.from({ length: 4 }, (_, h) => ((l * 4 + h) * 37 % 100) / 100)), sparsity: 0.5, stream: { sinks: 8, recent: 64 } }, storage: { key: 'rot2', value: 'rot2' } },
};

describe('copyFrom / fork', () => {
  for (const [name, kv] of Object.entries(configs)) {
    it(`${name}: a fork generates what the original would, from the compressed cache`, async () => {
      await using model = await loadModel({ path: fixture() });
      await using ctx = await model.createContext({ contextSize: 1024, threads: 1, batchSize: 256, sequences: 3, kv });
      const a = ctx.acquireSequence(), ref = ctx.acquireSequence();
      // the document once, with some decoding so the cache has evicted / trimmed / quantized
      await run(a, doc, 40);
      await run(ref, doc, 40);
      const before = a.memory();
      const b = await a.fork();
      expect(b.tokens).toEqual(a.tokens);
      expect(payload(b.memory())).toEqual(payload(before));
      expect(b.memory().breakdown.metadata).toBeLessThanOrEqual(before.breakdown.metadata);  // (tables copied without their spare capacity)
      expect(before.evictedTokens + (before.quantizedTokens ?? 0)).toBeGreaterThan(0);  // (something was compressed)
      // different questions on the original and the copy; the copy answers as `ref` (the same calls) does
      const [qa, qb, qr] = [await run(a, question(1), 30), await run(b, question(2), 30), await run(ref, question(2), 30)];
      expect(qb.tokens).toEqual(qr.tokens);
      expect(qb.usage).toEqual(qr.usage);  // (the same prefix reuse: a compressed cache rewinds as its original would)
      expect(qa.tokens).not.toEqual(qb.tokens);
      for (let l = 0; l < model.info.nLayer; l++) for (let h = 0; h < model.info.nHeadKv; h++) expect(b.heldPositions(l, h)).toEqual(ref.heldPositions(l, h));
      expect(payload(b.memory())).toEqual(payload(ref.memory()));
      // the copy owns its pages: clearing the original leaves it whole
      const held = b.memory();
      await a.clear();
      expect({ ...b.memory(), breakdown: { ...b.memory().breakdown, poolSlack: 0 } }).toEqual({ ...held, breakdown: { ...held.breakdown, poolSlack: 0 } });  // (slack: the context's pool)
      expect((await run(b, question(2), 30)).tokens).toEqual((await run(ref, question(2), 30)).tokens);
    });
  }

  it('compress once, ask many: a document evaluated once, its copies answer from it', async () => {
    await using model = await loadModel({ path: fixture() });
    await using ctx = await model.createContext({ contextSize: 1024, threads: 1, batchSize: 256, sequences: 3, kv: configs['stream heads + rot2']! });
    const d = ctx.acquireSequence();
    await run(d, doc, 1);  // (the sampled token is not evaluated: the cache holds the document)
    expect(d.tokens).toEqual(doc);
    expect(d.memory().evictedTokens).toBeGreaterThan(0);  // stream heads trimmed it
    const [x, y] = [await d.fork(), await d.fork()];
    const [fx, fy] = [await run(x, question(1), 10), await run(y, question(2), 10)];
    expect([fx.usage.cachedPromptTokens, fy.usage.cachedPromptTokens]).toEqual([doc.length, doc.length]);
    expect(fx.usage.promptTokens - fx.usage.cachedPromptTokens).toBe(20);  // only the question was evaluated
    // the same as a sequence that evaluated the document, then the question, itself
    await x.clear();
    await run(x, doc, 1);
    expect((await run(x, question(2), 10)).tokens).toEqual(fy.tokens);
  });

  it('refuses itself, another context, a busy sequence; fork() is a BusyError when no sequence is free, fork({ signal }) waits', async () => {
    await using model = await loadModel({ path: fixture() });
    await using ctx = await model.createContext({ contextSize: 256, threads: 1, sequences: 2 });
    await using other = await model.createContext({ contextSize: 256, threads: 1 });
    const a = ctx.acquireSequence();
    await run(a, doc.slice(0, 50), 4);
    await expect(a.copyFrom(a)).rejects.toThrow(/cannot copy itself/);
    await expect(other.acquireSequence().copyFrom(a)).rejects.toThrow(InvalidOptionsError);
    await expect(a.copyFrom({} as Sequence)).rejects.toThrow(/expected a Sequence/);
    const b = ctx.acquireSequence();
    const g = a.generate(doc.slice(0, 50), { maxTokens: 50, stopAtEog: false });
    await g.next();
    await expect(b.copyFrom(a)).rejects.toBeInstanceOf(BusyError);
    await g.return(undefined);
    await b.copyFrom(a);
    expect(b.tokens).toEqual(a.tokens);
    await expect(a.fork()).rejects.toBeInstanceOf(BusyError);  // both sequences taken
    const waiting = a.fork({ signal: AbortSignal.timeout(10_000) });
    await b.dispose();
    const c = await waiting;
    expect(c.tokens).toEqual(a.tokens);
  });
});
