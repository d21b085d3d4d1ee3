/**
 * `thinkcache demo`: the bundled tiny reasoner (no download, no GPU) streams its thinking and answer on a
 * sample problem, then the held-out accuracy and the KV memory of the full cache and of the compressed
 * presets are measured on a few problems per task.
 *   thinkcache demo [--task add|chase|cups] [--n N] [--kv PRESET ...] [--model M --profile P.tsv]
 *                   [--threads N] [--no-table] [--json]
 */
import { existsSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { LlmError } from '../errors.js';
import { bundledPath, formatAccuracyTable, kib, loadTinyProblems, runAccuracy, TINY_TASKS, tinyModelPath } from '../eval/accuracy.js';
import { KV_PRESETS, kvPreset } from '../kv/presets.js';
import type { GenerateEvent } from '../Sequence.js';
import { ReplyPrinter } from './chat.js';
import { loadModelWithProgress, progressEnabled } from './progress.js';

export const DEMO_USAGE = `  thinkcache demo [--task add|chase|cups] [--n N] [--kv PRESET ...] [--model M --profile P.tsv]
                  [--threads N] [--no-table] [--json]
`;

const DEFAULT_PRESETS = ['full', 'rlkv-50', 'lazy-50', 'rot2'];

export async function cmdDemo(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: 'string', short: 'm' }, profile: { type: 'string' }, task: { type: 'string', default: 'chase' }, n: { type: 'string', default: '5' },
      kv: { type: 'string', multiple: true }, threads: { type: 'string' }, 'no-table': { type: 'boolean' }, json: { type: 'boolean' },
    },
    strict: true,
  });
  const n = Number(values.n);
  if (!Number.isInteger(n) || n < 1 || n > 100) throw new LlmError(`--n: expected an integer in 1..100, received "${values.n}"`, 'ERR_INVALID_OPTIONS');
  const threads = values.threads === undefined ? undefined : Number(values.threads);
  if (threads !== undefined && !(Number.isInteger(threads) && threads > 0)) throw new LlmError(`--threads: expected a positive integer, received "${values.threads}"`, 'ERR_INVALID_OPTIONS');
  const task = values.task!;
  const sample = loadTinyProblems(task, 1)[0]!;
  const bundledProfile = bundledPath('tiny', 'model', 'thinkcache-tiny-reasoner.heads.tsv');
  const profile = values.profile ?? (values.model === undefined && existsSync(bundledProfile) ? bundledProfile : undefined);
  const names = values.kv?.length ? values.kv : DEFAULT_PRESETS;
  const presets = names.map((name) => {
    const p = kvPreset(name);
    if (!p) throw new LlmError(`--kv: unknown preset "${name}" (presets: ${KV_PRESETS.map((x) => x.name).join(', ')})`, 'ERR_INVALID_OPTIONS');
    return p;
  }).filter((p) => {
    if (p.needsProfile && !profile) { process.stderr.write(`demo: skipping preset ${p.name}: no head profile (give --profile P.tsv)\n`); return false; }
    return true;
  });
  if (!presets.some((p) => p.name === 'full')) presets.unshift(kvPreset('full')!);
  const modelPath = values.model ?? tinyModelPath();

  const out = process.stdout;
  const show = progressEnabled(values.json);
  await using model = await loadModelWithProgress(modelPath, show);
  const info = model.info;
  if (!values.json) {
    out.write(`model ${modelPath}\n  ${info.architecture}, ${info.nLayer} layers, ${info.nHead} query / ${info.nHeadKv} KV heads, n_embd ${info.nEmbd}\n\n`);
    out.write(`task "${task}", held-out problem ${sample.id}:\n${sample.question}\n\n`);
  }

  // 1. the sample problem, streamed (reasoning dimmed on a terminal)
  let finish: Extract<GenerateEvent, { type: 'finish' }> | undefined;
  {
    await using ctx = await model.createContext({ contextSize: 4096, ...(threads ? { threads } : {}) });
    await using seq = ctx.acquireSequence();
    const printer = values.json ? undefined : new ReplyPrinter(out, out);
    const ac = new AbortController();
    const onSigint = () => ac.abort();
    process.once('SIGINT', onSigint);
    try {
      for await (const ev of seq.generate([{ role: 'user', content: sample.question }], { maxTokens: 2048, signal: ac.signal, checkpoint: false })) {
        printer?.onEvent(ev);
        if (ev.type === 'finish') finish = ev;
      }
    } finally {
      printer?.end();
      process.off('SIGINT', onSigint);
    }
  }
  if (!finish) return 1;
  const ok = finish.text.trim() === sample.answer;
  if (values.json) {
    out.write(JSON.stringify({ type: 'sample', task, id: sample.id, answer: finish.text.trim(), expected: sample.answer, correct: ok, usage: finish.usage, timings: finish.timings, kv: finish.kv }) + '\n');
  } else {
    out.write(`\n\n${ok ? 'correct' : 'wrong'} (expected ${sample.answer}) — ${finish.usage.completionTokens} tokens (${finish.usage.reasoningTokens} thinking), ` +
      `${finish.timings.decodeTokensPerSecond.toFixed(0)} tok/s, KV cache ${kib(finish.kv.bytesAllocated)} for ${finish.kv.logicalTokens} tokens\n`);
  }
  if (finish.finishReason === 'aborted' || values['no-table']) return 0;

  // 2. accuracy and KV memory per preset, on the first n held-out problems of each task
  const problems = TINY_TASKS.flatMap((t) => loadTinyProblems(t, n));
  if (!values.json) {
    out.write(`\nKV presets on ${n} held-out problems per task (greedy, same problems for every preset):\n`);
    for (const p of presets) out.write(`  ${p.name.padEnd(8)} ${p.description}\n`);
  }
  const tty = process.stderr.isTTY && !values.json;
  let done = 0;
  const total = problems.length * presets.length;
  const { summaries } = await runAccuracy(model, {
    configs: presets.map((p) => ({ label: p.name, kv: p.build(profile) })), problems, maxTokens: 2048, ...(threads ? { threads } : {}),
    onResult: (r) => {
      done++;
      if (values.json) out.write(JSON.stringify({ type: 'problem', ...r }) + '\n');
      else if (tty) process.stderr.write(`\r  ${done}/${total} problems (${r.config})`.padEnd(50));
    },
  });
  if (tty) process.stderr.write('\r'.padEnd(52) + '\r');
  if (values.json) {
    for (const s of summaries) out.write(JSON.stringify({ type: 'summary', ...s, effective: undefined }) + '\n');
  } else {
    out.write('\n' + formatAccuracyTable(summaries));
    out.write('\nKV at end = bytes the sequence held when the problem finished (pages actually allocated); "of full" compares with the full cache on the same problems.\n');
    out.write(`More: thinkcache eval --accuracy --kv PRESET --n 100 (accuracy), thinkcache eval --model M --kv PRESET (KL vs the full cache).\n`);
  }
  return 0;
}
