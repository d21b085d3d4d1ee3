// kv.storage (KV codecs): option resolution, ctx.effective, real memory in the report, agreement with
// the f16 cache, and the f16 default leaving greedy tokens untouched.
import { describe, expect, it } from 'vitest';
import { InvalidOptionsError, loadModel, type GenerateEvent } from '../../lib/index.js';
import { KvOptionsSchema, resolveKvOptions } from '../../lib/kv/kv-options.js';
import { ensureFixture } from '../fixtures/make-tiny-gguf.js';

const fixture = () => ensureFixture('llama', 'f32', { nLayer: 2 });

async function greedy(kv: object | undefined, prompt: string, n: number) {
  await using model = await loadModel({ path: fixture() });
  await using ctx = await model.createContext({ contextSize: 512, threads: 1, ...(kv ? { kv } : {}) });
  const seq = ctx.acquireSequence();
  let fin: Extract<GenerateEvent, { type: 'finish' }> | undefined;
  for await (const ev of seq.generate(prompt, { maxTokens: n, stopAtEog: false })) if (ev.type === 'finish') fin = ev;
  return { fin: fin!, memory: seq.memory(), effective: ctx.effective };
}

describe('kv.storage', () => {
  it('resolves defaults and shows them in the effective config', () => {
    const r = resolveKvOptions(KvOptionsSchema.parse({ storage: { key: 'rot2', value: 'kivi2' } }), { nLayer: 2, nHeadKv: 2 });
    expect(r.effective.storage).toEqual({
      key: 'rot2', value: 'kivi2', stagingTokens: 64, protectFirst: 16, protectSinks: true, clip: null, groupSize: 32, variant: 'pre-rope', permutation: 'auto', rotationGroup: 1, groupedHeads: 0,
      keyClip: 0.8, valueClip: null, keyGroupSize: 32, valueGroupSize: 32,
    });
    // what each side applies: q8/q4 always group 32 channels; a group that does not divide the head covers it; clip only for rot
    const applied = (storage: object, headDim: number) => {
      const e = resolveKvOptions(KvOptionsSchema.parse({ storage }), { nLayer: 1, nHeadKv: 1, headDim, headDimV: headDim }).effective.storage;
      return [e.keyGroupSize, e.valueGroupSize, e.keyClip, e.valueClip];
    };
    expect(applied({ key: 'q8', value: 'rot4', groupSize: 16 }, 64)).toEqual([32, 16, null, 1]);
    expect(applied({ key: 'rot3', value: 'q4', groupSize: 48, clip: 0.9 }, 64)).toEqual([64, 32, 0.9, null]);
    expect(applied({ key: 'kivi4', value: 'f16', groupSize: 64 }, 128)).toEqual([64, null, null, null]);
    expect(resolveKvOptions(undefined, { nLayer: 1, nHeadKv: 1 }).effective.storage.key).toBe('f16');
    expect(() => KvOptionsSchema.parse({ storage: { key: 'rot5' } })).toThrow();
    expect(() => resolveKvOptions(KvOptionsSchema.parse({ storage: { key: 'kivi2', groupSize: 24 } }), { nLayer: 1, nHeadKv: 1 })).toThrow(InvalidOptionsError);
  });

  it('stores codes in the cache: fewer bytes, report split into codes / scales / staging, tokens close to f16', async () => {
    const prompt = 'Once upon a time there was a little robot who liked to count the stars in the sky every night.';
    const full = await greedy(undefined, prompt, 48);
    for (const storage of [
      { key: 'rot4', value: 'rot4', stagingTokens: 8, protectFirst: 2, groupSize: 16 },
      { key: 'rot2', value: 'rot2', stagingTokens: 8, protectFirst: 2, variant: 'post-rope' },
      { key: 'kivi2', value: 'kivi2', stagingTokens: 16, protectFirst: 0 },
      { key: 'q8', value: 'q4', stagingTokens: 0, protectFirst: 0 },
    ]) {
      const r = await greedy({ storage }, prompt, 48);
      expect(r.effective.kv.storage.key).toBe(storage.key);
      const b = r.memory.breakdown;
      expect(r.memory.quantizedTokens).toBeGreaterThan(0);
      expect(b.codes).toBeGreaterThan(0);
      expect(b.scales).toBeGreaterThan(0);
      expect(b.keys + b.values).toBe(b.codes! + b.scales! + b.staging!);
      expect(r.memory.bytesUsed).toBeLessThan(full.memory.bytesUsed);
      expect(r.memory.residentTokens).toBe(full.memory.residentTokens);
    }
  });
});
