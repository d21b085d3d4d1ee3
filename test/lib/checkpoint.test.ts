// Prefix checkpoints (generate's `checkpoint`): a compressed cache cannot rewind into tokens it dropped or
// quantized while decoding, so without a checkpoint a chat's next turn — whose prompt repeats this turn's prompt,
// then a re-rendered answer — re-evaluated everything after the sinks. With it the turn resumes at the end of the
// previous prompt, exactly as a sequence that had evaluated only that prompt would; plain f16 caches keep none.
import { describe, expect, it } from 'vitest';
import { loadModel, type GenerateEvent, type KvOptions, type Sequence } from '../../lib/index.js';
import { ensureFixture } from '../fixtures/make-tiny-gguf.js';

const fixture = () => ensureFixture('llama', 'q8_0', { nEmbd: 256, nLayer: 4, nHead: 8, nHeadKv: 4, headDim: 32, nFf: 512, nCtxTrain: 2048 });
type Finish = Extract<GenerateEvent, { type: 'finish' }>;
async function run(seq: Sequence, prompt: number[], maxTokens: number, checkpoint: boolean | 'auto' = 'auto'): Promise<Finish> {
  let fin: Finish | undefined;
  for await (const ev of seq.generate(prompt, { maxTokens, stopAtEog: false, checkpoint })) if (ev.type === 'finish') fin = ev;
  return fin!;
}
const turn1 = Array.from({ length: 500 }, (_, i) => 300 + ((i * 13) % 250));
// the next turn: the first prompt, an answer other than the tokens generated (templates drop the reasoning), a question
const turn2 = [...turn1, ...Array.from({ length: 30 }, (_, i) => 40 + ((i * 7) % 60))];
const profile = Array.from({ length: 4 }, (_, l) => Array.from({ length: 4 }, (_, h) => ((l * 4 + h) * 37 % 100) / 100));
// (lazy eviction: a 500-token prompt is over the capacity, so only checkpoint: true keeps one)
const configs: Record<string, { kv: KvOptions; mode: boolean | 'auto' }> = {
  'stream heads': { kv: { heads: { profile, sparsity: 0.5, stream: { sinks: 8, recent: 64 } } }, mode: 'auto' },
  'rot2': { kv: { storage: { key: 'rot2', value: 'rot2' } }, mode: 'auto' },
  'stream heads + rot2': { kv: { heads: { profile, sparsity: 0.5, stream: { sinks: 8, recent: 64 } }, storage: { key: 'rot2', value: 'rot2' } }, mode: 'auto' },
  'lazy eviction': { kv: { eviction: { policy: 'lazy', capacity: 200, window: 32 } }, mode: true },
};

describe('prefix checkpoints', () => {
  for (const [name, { kv, mode }] of Object.entries(configs)) {
    it(`${name}: the next turn resumes at the end of the previous prompt`, async () => {
      await using model = await loadModel({ path: fixture() });
      await using ctx = await model.createContext({ contextSize: 1024, threads: 1, batchSize: 256, sequences: 3, kv });
      const [a, ref, off] = [ctx.acquireSequence(), ctx.acquireSequence(), ctx.acquireSequence()];
      await run(a, turn1, 60, mode);
      expect(a.memory().breakdown.checkpoint).toBeGreaterThan(0);
      expect(a.memory().bytesAllocated).toBeGreaterThan(a.memory().breakdown.checkpoint);
      const next = await run(a, turn2, 20, mode);
      expect(next.usage.cachedPromptTokens).toBe(turn1.length);
      // the same as a sequence that evaluated only the first prompt, then the second
      await run(ref, turn1, 1);
      const want = await run(ref, turn2, 20);
      expect(want.usage.cachedPromptTokens).toBe(turn1.length);
      expect(next.tokens).toEqual(want.tokens);
      for (let l = 0; l < model.info.nLayer; l++) for (let h = 0; h < model.info.nHeadKv; h++) expect(a.heldPositions(l, h)).toEqual(ref.heldPositions(l, h));
      // without a checkpoint the cache falls back (to the sinks or the protected prefix) and re-evaluates
      await run(off, turn1, 60, false);
      expect(off.memory().breakdown.checkpoint).toBe(0);
      expect((await run(off, turn2, 20, false)).usage.cachedPromptTokens).toBeLessThan(20);
      // a rewind below the checkpoint drops it; clear() frees it
      await run(a, turn1.slice(0, 100), 4, mode);
      expect(a.memory().breakdown.checkpoint).toBeGreaterThan(0);  // (the new prompt's)
      await a.clear();
      expect(a.memory().breakdown.checkpoint).toBe(0);
    });
  }

  it("'auto' keeps none where an evicting head holds more than the capacity (its copy would hold the whole prompt)", async () => {
    await using model = await loadModel({ path: fixture() });
    await using ctx = await model.createContext({ contextSize: 1024, threads: 1, batchSize: 256, kv: configs['lazy eviction']!.kv });
    const a = ctx.acquireSequence();
    await run(a, turn1, 60);
    expect(a.memory().breakdown.checkpoint).toBe(0);
    await run(a, turn1.slice(0, 150), 60);  // (under the capacity)
    expect(a.memory().breakdown.checkpoint).toBeGreaterThan(0);
  });

  it('a plain f16 cache rewinds exactly and keeps no checkpoint', async () => {
    await using model = await loadModel({ path: fixture() });
    await using ctx = await model.createContext({ contextSize: 1024, threads: 1, batchSize: 256 });
    const a = ctx.acquireSequence();
    await run(a, turn1, 60);
    expect(a.memory().breakdown.checkpoint).toBe(0);
    expect((await run(a, turn2, 5)).usage.cachedPromptTokens).toBe(turn1.length);
  });
});
