// Quantized weights against llama.cpp (node-llama-cpp 3.21.1, one thread): a seeded f32 fixture quantized by
// OUR quantizer into every file type (test/fixtures/quant-fixtures.ts), both engines loading the same file.
// Identical greedy tokens (32 per prompt) show that our block decoding and dot products read our bytes the
// way llama.cpp does; the first-step logits are compared as well (top-5 log-probabilities).
import { afterAll, describe, expect, it } from 'vitest';
import { readGgufInfo } from '../../lib/gguf.js';
import { loadModel } from '../../lib/index.js';
import { ensureQuantFixture, QUANT_PARITY_TYPES } from '../fixtures/quant-fixtures.js';
import { disposeOracle, oracleGreedy, oracleGreedyDetailed, oracleTokenize } from '../helpers/llama-oracle.js';

afterAll(async () => { await disposeOracle(); });

const PROMPTS = ['Once upon a time', 'The quick brown fox jumps over the lazy dog.'];
const N = 32;

async function ourGreedy(path: string, tokens: number[], n: number): Promise<number[]> {
  await using model = await loadModel({ path });
  await using ctx = await model.createContext({ contextSize: 256, threads: 1 });
  const seq = ctx.acquireSequence();
  for await (const ev of seq.generate(tokens, { maxTokens: n, stopAtEog: false })) if (ev.type === 'finish') return ev.tokens;
  throw new Error('no finish event');
}

/** Our log-probabilities after the prompt (logit - logsumexp), for the tokens llama.cpp ranks top-5. */
async function ourFirstLogProbs(path: string, tokens: number[], ids: number[]): Promise<number[]> {
  await using model = await loadModel({ path });
  await using ctx = await model.createContext({ contextSize: 256, threads: 1 });
  const logits = await ctx.acquireSequence().evaluate(tokens);
  let max = -Infinity;
  for (const l of logits) max = Math.max(max, l);
  let sum = 0;
  for (const l of logits) sum += Math.exp(l - max);
  const lse = max + Math.log(sum);
  return ids.map((id) => logits[id]! - lse);
}

describe('greedy parity with llama.cpp on fixtures quantized by our quantizer', () => {
  it('q4_k_m mixes Q4_K and Q6_K tensors and keeps norms in F32', async () => {
    const info = await readGgufInfo(await ensureQuantFixture('q4_k_m'));
    const types = new Set(info.tensors.map((t) => t.typeName));
    expect(types).toEqual(new Set(['f32', 'q4_K', 'q6_K']));
    expect(info.metadata['general.file_type']).toBe(15);
    for (const t of info.tensors) if (t.shape.length === 1) expect(t.typeName).toBe('f32');
    expect(info.tensors.find((t) => t.name === 'output.weight')?.typeName).toBe('q6_K');
  });

  for (const type of QUANT_PARITY_TYPES) {
    it(`${type}: same ${N} greedy tokens for each prompt`, async () => {
      const path = await ensureQuantFixture(type);
      await using model = await loadModel({ path });
      for (const prompt of PROMPTS) {
        const tokens = model.tokenize(prompt);
        expect(tokens).toEqual(await oracleTokenize(path, prompt, { addBos: 'model' }));
        const want = await oracleGreedy(path, tokens, N);
        const got = await ourGreedy(path, tokens, N);
        if (JSON.stringify(got) !== JSON.stringify(want)) {
          // say where and how close the reference was to a tie there
          const detail = await oracleGreedyDetailed(path, tokens, N);
          const at = got.findIndex((t, i) => t !== want[i]);
          throw new Error(`${type} "${prompt}": first difference at step ${at} (ours ${got[at]}, llama.cpp ${want[at]}, ` +
            `llama.cpp margin ${detail[at]?.margin.toFixed(4)})`);
        }
        expect(got).toEqual(want);
      }
      // first-step logits: the same values up to float summation order
      const tokens = model.tokenize(PROMPTS[0]!);
      const [step] = await oracleGreedyDetailed(path, tokens, 1, { topK: 5 });
      const mine = await ourFirstLogProbs(path, tokens, step!.top.map((c) => c.token));
      for (let i = 0; i < mine.length; i++) expect(Math.abs(mine[i]! - step!.top[i]!.logProb)).toBeLessThan(2e-3);
    });
  }
});
