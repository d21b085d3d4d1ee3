// The bundled tiny reasoner (tiny/model/thinkcache-tiny-reasoner.gguf, trained by tiny/train.py): llama.cpp
// (node-llama-cpp 3.21.1) and our tokenizer agree on the chat text of held-out problems (special tokens parsed),
// the chat template renders the ChatML prompt, and the first greedy tokens of one problem per task are equal.
// Skips with a reason when the model file is absent (it is committed once training is done).
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadModel } from '../../lib/index.js';
import { disposeOracle, oracleGreedy, oracleTokenize } from '../helpers/llama-oracle.js';

const ROOT = join(import.meta.dirname, '..', '..');
const MODEL = join(ROOT, 'tiny', 'model', 'thinkcache-tiny-reasoner.gguf');
const TASKS = ['add', 'chase', 'cups'] as const;
const have = existsSync(MODEL);
if (!have) console.log(`tiny-reasoner tests skipped: ${MODEL} is absent (train and export it, see tiny/README.md)`);

interface Problem { question: string; chain: string; answer: string }
const problems = (task: string, n: number): Problem[] =>
  readFileSync(join(ROOT, 'tiny', 'data', `test-${task}.jsonl`), 'utf8').split('\n').filter((l) => l !== '').slice(0, n)
    .map((l) => JSON.parse(l) as Problem);

afterAll(async () => { await disposeOracle(); });

describe.skipIf(!have)('bundled tiny reasoner', () => {
  it('tokenizes chat text (prompt, chain of thought, answer) as llama.cpp does', async () => {
    await using model = await loadModel({ path: MODEL });
    for (const task of TASKS) {
      for (const p of problems(task, 3)) {
        const text = `<|im_start|>user\n${p.question}<|im_end|>\n<|im_start|>assistant\n<think>\n${p.chain}\n</think>\n\n${p.answer}<|im_end|>`;
        const ours = model.tokenize(text, { addBos: true, parseSpecial: true });
        expect(ours).toEqual(await oracleTokenize(MODEL, text, { addBos: true, special: true }));
        expect(model.tokenizer.decode(ours, { special: true, removeSpecial: true })).toBe(text);
      }
    }
  });

  it('renders the ChatML template with BOS and the generation prompt', async () => {
    await using model = await loadModel({ path: MODEL });
    expect(model.applyChatTemplate([{ role: 'user', content: '12+34=?' }], { addGenerationPrompt: true }))
      .toBe('<s><|im_start|>user\n12+34=?<|im_end|>\n<|im_start|>assistant\n');
  });

  it('first 96 greedy tokens equal llama.cpp on one problem per task', async () => {
    await using model = await loadModel({ path: MODEL });
    await using ctx = await model.createContext({ contextSize: 2048, threads: 1 });
    for (const task of TASKS) {
      const p = problems(task, 1)[0]!;
      const prompt = model.tokenize(`<|im_start|>user\n${p.question}<|im_end|>\n<|im_start|>assistant\n`, { addBos: true, parseSpecial: true });
      const want = await oracleGreedy(MODEL, prompt, 96);
      const seq = ctx.acquireSequence();
      let got: number[] = [];
      for await (const ev of seq.generate(prompt, { maxTokens: 96, stopAtEog: false })) if (ev.type === 'finish') got = ev.tokens;
      await seq.dispose();
      expect(got).toEqual(want);
    }
  });

  it('thinkcache demo streams the sample problem and prints accuracy and KV memory per preset', () => {
    const r = spawnSync(process.execPath, [join(ROOT, 'bin', 'thinkcache.cjs'), 'demo', '--n', '1', '--threads', '1'], { encoding: 'utf8', cwd: ROOT, timeout: 300_000 });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/<think>|correct|wrong/);
    expect(r.stdout).toMatch(/\(expected [A-Za-z]\)/);  // the default task is chase: the answer is a single-letter key
    for (const preset of ['full', 'rlkv-50', 'lazy-50', 'rot2']) expect(r.stdout).toMatch(new RegExp(`^${preset}\\s+(add|chase|cups)\\s+1\\s`, 'm'));
  });
});
