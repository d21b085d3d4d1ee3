// Greedy parity with llama.cpp (node-llama-cpp 3.21.1, one thread): every synthetic fixture
// (llama/qwen2/qwen3 × f32/f16/bf16/q8_0) tokenizes identically and yields the identical first 32
// greedy tokens; stories260K reproduces the stored 64-token reference.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadModel } from '../../lib/index.js';
import { ensureFixture, TINY_ARCHES, TINY_WEIGHT_TYPES } from '../fixtures/make-tiny-gguf.js';
import { disposeOracle, oracleGreedy, oracleTokenize } from '../helpers/llama-oracle.js';
import { haveSharedFile, sharedData, stories260K } from '../helpers/shared-data.js';

afterAll(async () => { await disposeOracle(); });

async function ourGreedy(path: string, tokens: number[], n: number): Promise<number[]> {
  await using model = await loadModel({ path });
  await using ctx = await model.createContext({ contextSize: 256, threads: 1 });
  const seq = ctx.acquireSequence();
  for await (const ev of seq.generate(tokens, { maxTokens: n, stopAtEog: false })) {
    if (ev.type === 'finish') return ev.tokens;
  }
  throw new Error('no finish event');
}

const PROMPTS = ['Once upon a time', 'The quick brown fox jumps over the lazy dog.'];

describe('greedy parity with llama.cpp on synthetic fixtures', () => {
  for (const arch of TINY_ARCHES) {
    for (const type of TINY_WEIGHT_TYPES) {
      it(`${arch} ${type}: same tokens for the prompt and the first 32 greedy tokens`, async () => {
        const path = ensureFixture(arch, type);
        await using model = await loadModel({ path });
        for (const prompt of PROMPTS) {
          const ours = model.tokenize(prompt);
          const ref = await oracleTokenize(path, prompt, { addBos: 'model' });
          expect(ours).toEqual(ref);
          const want = await oracleGreedy(path, ref, 32);
          const got = await ourGreedy(path, ours, 32);
          expect(got).toEqual(want);
        }
      });
    }
  }
});

describe.skipIf(!haveSharedFile(stories260K, 'stories260K parity'))('stories260K', () => {
  it('the 64 greedy tokens for "Once upon a time" equal the llama.cpp reference', async () => {
    const ref = JSON.parse(readFileSync(join(sharedData, 'models', 'stories260K.greedy-reference.json'), 'utf8')) as {
      prompt: string; input_tokens_with_bos: number[]; greedy_tokens: number[]; text: string;
    };
    await using model = await loadModel({ path: stories260K });
    expect(model.tokenize(ref.prompt)).toEqual(ref.input_tokens_with_bos);
    await using ctx = await model.createContext({ contextSize: 512, threads: 1 });
    const seq = ctx.acquireSequence();
    let finish;
    for await (const ev of seq.generate(ref.prompt, { maxTokens: 64, stopAtEog: false })) if (ev.type === 'finish') finish = ev;
    expect(finish!.tokens).toEqual(ref.greedy_tokens);
    expect(finish!.text).toBe(ref.text);
  });
});
