/**
 * "Compress once, ask many" across processes: a `--prompt`-token document is evaluated, its sequence state saved
 * to a file and loaded into a fresh context, which then answers a 40-token question. Per KV configuration: the
 * prefill it replaces, the save and load times, the file's size and the loaded sequence's cached prompt tokens;
 * then llama.cpp (node-llama-cpp 3.21.1, prebuilt CPU, f16 cache) doing the same with its saveStateToFile /
 * loadStateFromFile, in the same run, after ours.
 *   npx tsx bench/state.bench.ts [--model bench/results/qwen2-0.5b-shape-q8_0.gguf] [--prompt 1500] [--threads 2]
 * (the default model is written by `npm run bench`)
 */
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { getLlama, LlamaLogLevel } from 'node-llama-cpp';
import { loadModel, type KvOptions } from '../lib/index.js';

const { values } = parseArgs({
  options: {
    model: { type: 'string', default: 'bench/results/qwen2-0.5b-shape-q8_0.gguf' },
    prompt: { type: 'string', default: '1500' }, threads: { type: 'string', default: '2' },
  },
});
if (!existsSync(values.model)) {
  console.error(`${values.model} not found: run \`npm run bench\` once (it writes the Qwen2-shape models), or pass --model`);
  process.exit(1);
}
const nPrompt = Number(values.prompt), threads = Number(values.threads);
const dir = mkdtempSync(join(tmpdir(), 'thinkcache-state-bench-'));
const ms = (t0: number) => performance.now() - t0;
const kib = (b: number) => `${(b / 1024).toFixed(0)} KiB`;
const row = (engine: string, name: string, prefill: number, save: number, load: number, bytes: number, cached: string) =>
  console.log(`${engine.padEnd(10)} ${name.padEnd(18)} ${prefill.toFixed(0).padStart(8)} ms ${save.toFixed(1).padStart(8)} ms ${load.toFixed(1).padStart(8)} ms ` +
    `${kib(bytes).padStart(11)}   ${cached}`);

const model = await loadModel({ path: values.model });
const V = model.info.nVocab;
const doc = Array.from({ length: nPrompt }, (_, i) => 1000 + ((i * 37) % Math.max(1, V - 1000)));
const ask = [...doc, ...Array.from({ length: 40 }, (_, i) => 200 + i)];
const profile = Array.from({ length: model.info.nLayer }, (_, l) => Array.from({ length: model.info.nHeadKv }, (_, h) => ((l * 7 + h * 3) % 10) / 10));
const configs: Record<string, KvOptions> = {
  f16: {},
  rot2: { storage: { key: 'rot2', value: 'rot2' } },
  'stream 50% + rot2': { heads: { profile, sparsity: 0.5, stream: { sinks: 16, recent: 64 } }, storage: { key: 'rot2', value: 'rot2' } },
};
console.log(`${values.model}: a ${nPrompt}-token document saved, loaded into a fresh context, then a 40-token question; ${threads} threads`);
console.log('engine     config              prefill       save       load        file   question: cached / prompt tokens');
for (const [name, kv] of Object.entries(configs)) {
  const opts = { contextSize: nPrompt + 64, threads, batchSize: 512, kv };
  const file = join(dir, `${name.replace(/\W+/g, '-')}.tcstate`);
  let prefill = 0, save = 0, bytes = 0;
  {
    await using ctx = await model.createContext(opts);
    const seq = ctx.acquireSequence();
    for await (const ev of seq.generate(doc, { maxTokens: 1, stopAtEog: false })) if (ev.type === 'finish') prefill = ev.timings.prefillMs;
    const t0 = performance.now();
    bytes = (await seq.saveStateToFile(file)).bytes;
    save = ms(t0);
  }
  await using ctx = await model.createContext(opts);
  const seq = ctx.acquireSequence();
  const t0 = performance.now();
  await seq.loadStateFromFile(file);
  const load = ms(t0);
  let cached = '';
  for await (const ev of seq.generate(ask, { maxTokens: 1, stopAtEog: false })) {
    if (ev.type === 'finish') cached = `${ev.usage.cachedPromptTokens} / ${ev.usage.promptTokens} (prefill ${ev.timings.prefillMs.toFixed(0)} ms)`;
  }
  row('thinkcache', name, prefill, save, load, bytes, cached);
}
await model.dispose();

{
  const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
  const lm = await llama.loadModel({ modelPath: values.model, gpuLayers: 0 });
  const file = join(dir, 'llama.cpp.state');
  const opts = { contextSize: nPrompt + 64, threads, batchSize: 512 };
  const a = await lm.createContext(opts);
  const sa = a.getSequence();
  let t0 = performance.now();
  await sa.evaluateWithoutGeneratingNewTokens(doc as never);
  const prefill = ms(t0);
  t0 = performance.now();
  await sa.saveStateToFile(file);
  const save = ms(t0);
  await a.dispose();
  const b = await lm.createContext(opts);
  const sb = b.getSequence();
  t0 = performance.now();
  await sb.loadStateFromFile(file, { acceptRisk: true });
  const load = ms(t0);
  // (its sequence then holds the document's tokens: the question's evaluation reuses them as ours does)
  row('llama.cpp', 'f16', prefill, save, load, statSync(file).size, `${sb.contextTokens.length} tokens held after the load`);
  await b.dispose();
  await lm.dispose();
}
rmSync(dir, { recursive: true, force: true });
