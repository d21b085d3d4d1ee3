/**
 * A chat's second turn on a compressed cache, with and without a prefix checkpoint (generate's `checkpoint`):
 * turn 1 = a `--prompt`-token prompt and `--decode` generated tokens; turn 2 = turn 1's prompt + 40 new tokens
 * (as a chat template repeats the conversation and drops the reasoning). Prints turn 2's cached prompt tokens,
 * its engine prefill time and the checkpoint's memory; then llama.cpp (node-llama-cpp 3.21.1, prebuilt CPU, f16
 * cache, which rewinds exactly) doing the same turns in the same run: its turn 2 erases the generated tokens and
 * evaluates the 40 new ones.
 *   npx tsx bench/multi-turn.bench.ts [--model bench/results/qwen2-0.5b-shape-q8_0.gguf] [--prompt 1500] [--decode 64] [--threads 2]
 * (the default model is written by `npm run bench`)
 */
import { existsSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { getLlama, LlamaLogLevel } from 'node-llama-cpp';
import { loadModel, type KvOptions } from '../lib/index.js';

const { values } = parseArgs({
  options: {
    model: { type: 'string', default: 'bench/results/qwen2-0.5b-shape-q8_0.gguf' },
    prompt: { type: 'string', default: '1500' }, decode: { type: 'string', default: '64' }, threads: { type: 'string', default: '2' },
  },
});
if (!existsSync(values.model)) {
  console.error(`${values.model} not found: run \`npm run bench\` once (it writes the Qwen2-shape models), or pass --model`);
  process.exit(1);
}
const nPrompt = Number(values.prompt), nDecode = Number(values.decode), threads = Number(values.threads);
const model = await loadModel({ path: values.model });
// a synthetic head profile (the speed does not depend on which heads stream)
const profile = Array.from({ length: model.info.nLayer }, (_, l) => Array.from({ length: model.info.nHeadKv }, (_, h) => ((l * 7 + h * 3) % 10) / 10));
const configs: Record<string, KvOptions> = {
  rot2: { storage: { key: 'rot2', value: 'rot2' } },
  'stream 50% + rot2': { heads: { profile, sparsity: 0.5, stream: { sinks: 16, recent: 64 } }, storage: { key: 'rot2', value: 'rot2' } },
};
const info = model.info;
const V = info.nVocab;
const t1 = Array.from({ length: nPrompt }, (_, i) => 1000 + ((i * 37) % Math.max(1, V - 1000)));
const t2 = [...t1, ...Array.from({ length: 40 }, (_, i) => 200 + i)];
console.log(`${values.model}: turn 1 = ${nPrompt} prompt + ${nDecode} generated tokens, turn 2 = turn 1's prompt + 40; ${threads} threads`);
for (const [name, kv] of Object.entries(configs)) {
  for (const checkpoint of [true, false]) {
    await using ctx = await model.createContext({ contextSize: nPrompt + nDecode + 64, threads, batchSize: 512, kv });
    const seq = ctx.acquireSequence();
    for await (const _ of seq.generate(t1, { maxTokens: nDecode, stopAtEog: false, checkpoint })) { /* turn 1 */ }
    const m = seq.memory();
    for await (const ev of seq.generate(t2, { maxTokens: 1, stopAtEog: false, checkpoint })) {
      if (ev.type !== 'finish') continue;
      console.log(`${name.padEnd(18)} checkpoint ${String(checkpoint).padEnd(5)}  turn 2: ${String(ev.usage.cachedPromptTokens).padStart(5)}/${ev.usage.promptTokens} cached, ` +
        `prefill ${ev.timings.prefillMs.toFixed(0).padStart(5)} ms   checkpoint ${(m.breakdown.checkpoint / 1024).toFixed(0)} KiB of ${(m.bytesAllocated / 1024).toFixed(0)} KiB allocated`);
    }
  }
}
await model.dispose();

{
  const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
  const lm = await llama.loadModel({ modelPath: values.model, gpuLayers: 0 });
  const ctx = await lm.createContext({ contextSize: nPrompt + nDecode + 64, threads, batchSize: 512 });
  const seq = ctx.getSequence();
  let n = 0;
  for await (const _ of seq.evaluate(t1 as never, { temperature: 0 })) if (++n >= nDecode) break;  // turn 1
  const held = seq.contextTokens as readonly number[];
  let common = 0;
  while (common < held.length && common < t2.length && held[common] === t2[common]) common++;
  await seq.eraseContextTokenRanges([{ start: common, end: seq.nextTokenIndex }]);
  const t0 = performance.now();  // (the evaluation only, as our prefillMs: neither counts the rewind)
  await seq.evaluateWithoutGeneratingNewTokens(t2.slice(common) as never);
  const prefill = performance.now() - t0;
  // K + V of the tokens it held at the end of turn 1 (the last generated one is not evaluated; analytic: llama.cpp
  // allocates the whole context up front)
  const kv = (nPrompt + nDecode - 1) * info.nLayer * info.nHeadKv * info.headDim * 2 * 2;
  console.log(`${'llama.cpp f16'.padEnd(18)} (exact rewind)    turn 2: ${String(common).padStart(5)}/${t2.length} cached, prefill ${prefill.toFixed(0).padStart(5)} ms   ` +
    `(its f16 cache held ${(kv / 1024).toFixed(0)} KiB)`);
  await ctx.dispose();
  await lm.dispose();
  await llama.dispose();
}
