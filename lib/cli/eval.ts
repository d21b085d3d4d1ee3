/**
 * `thinkcache eval`: fidelity of KV configurations against the full cache (ALGORITHMS.md §5, P1), or, with
 * --accuracy, free-running task accuracy (P2).
 *   thinkcache eval --model M --kv '{"heads":{"profile":"p.tsv","sparsity":0.5}}' [--kv rot2 ...]
 *                   [--profile P.tsv --sweep-sparsity 0,0.25,0.5,0.75 --stream 16+48,4+28]
 *                   [--traces N] [--max-tokens T] [--stop-at-eog] [--prompts FILE] [--threads N] [--context N]
 *                   [--json] [--chart out.svg]
 *   thinkcache eval --accuracy [--model M] [--tasks tiny|add,chase,cups] [--data FILE.jsonl ...] [--n N]
 *                   [--kv CONFIG ...] [--max-tokens T] [--loop-guard] [--json]
 * --kv takes a JSON object (the API's `kv` option) or a preset name (full, rlkv-50, lazy-50, rot2, q4).
 */
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { LlmError } from '../errors.js';
import { DEFAULT_PROMPTS, fidelityChartSvg, runFidelity, type FidelityResult } from '../eval/fidelity.js';
import { formatAccuracyTable, kib, loadJsonlProblems, loadTinyProblems, runAccuracy, TINY_TASKS, tinyModelPath, type AccuracyProblem } from '../eval/accuracy.js';
import { readPromptFile } from '../eval/prompts.js';
import { KvOptionsSchema, type KvOptions } from '../kv/kv-options.js';
import { KV_PRESETS, kvPreset } from '../kv/presets.js';
import { loadModel } from '../Model.js';
import { parseOptions } from '../options.js';
import { backendOption } from './progress.js';

function int(v: string | undefined, name: string, def: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new LlmError(`--${name}: expected a positive integer, received "${v}"`, 'ERR_INVALID_OPTIONS');
  return n;
}

export function formatFidelityTable(rs: FidelityResult[]): string {
  const head = ['config', 'KV bytes (mean)', 'of full', 'KL mean', 'KL p95', 'top-1', 'ΔNLL', 'mean rank'];
  const rows = rs.map((r) => [r.label, kib(r.kvBytes), `${(100 * r.kvFraction).toFixed(1)}%`, r.klMean.toExponential(2), r.klP95.toExponential(2),
    `${(100 * r.top1Agreement).toFixed(1)}%`, r.deltaNll.toFixed(4), r.meanRank.toFixed(2)]);
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ');
  // §6.2 C2: how far codes change what an eviction policy keeps, against the f16 twin in the same run
  const notes = rs.filter((r) => r.keepJaccard).map((r) =>
    `keep-set Jaccard of ${r.label} vs ${r.keepJaccard!.vs}: mean ${r.keepJaccard!.mean.toFixed(3)}, min ${r.keepJaccard!.min.toFixed(3)} (per layer and head, end of each trace)`);
  return [line(head), ...rows.map(line), ...notes].join('\n') + '\n';
}

export async function cmdEval(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: 'string', short: 'm' }, kv: { type: 'string', multiple: true }, profile: { type: 'string' },
      'sweep-sparsity': { type: 'string' }, stream: { type: 'string' }, traces: { type: 'string' }, 'max-tokens': { type: 'string' },
      prompts: { type: 'string' }, threads: { type: 'string' }, context: { type: 'string' }, json: { type: 'boolean' }, chart: { type: 'string' },
      accuracy: { type: 'boolean' }, tasks: { type: 'string' }, data: { type: 'string', multiple: true }, n: { type: 'string' }, 'loop-guard': { type: 'boolean' },
      'stop-at-eog': { type: 'boolean' }, backend: { type: 'string' },
    },
    strict: true,
  });
  if (values.accuracy) return cmdAccuracy(values);
  if (!values.model) throw new LlmError('thinkcache eval: --model is required', 'ERR_INVALID_OPTIONS');
  const configs = parseKvConfigs(values.kv ?? [], values.profile);
  if (values['sweep-sparsity']) {
    if (!values.profile) throw new LlmError('--sweep-sparsity needs --profile P.tsv', 'ERR_INVALID_OPTIONS');
    const windows = (values.stream ?? '16+64').split(',').map((w) => {
      const m = /^(\d+)\+(\d+)$/.exec(w.trim());
      if (!m) throw new LlmError(`--stream: expected S+R pairs like 16+48,4+28, received "${w}"`, 'ERR_INVALID_OPTIONS');
      return { sinks: Number(m[1]), recent: Number(m[2]) };
    });
    for (const w of windows) {
      for (const s of values['sweep-sparsity'].split(',').map(Number)) {
        if (!(s >= 0 && s <= 1)) throw new LlmError(`--sweep-sparsity: ${s} is not in [0, 1]`, 'ERR_INVALID_OPTIONS');
        configs.push({ label: `s=${s} S+R=${w.sinks}+${w.recent}`, kv: { heads: { profile: values.profile, sparsity: s, stream: w } } });
      }
    }
  }
  if (configs.length === 0) throw new LlmError('thinkcache eval: give at least one --kv CONFIG or --profile with --sweep-sparsity', 'ERR_INVALID_OPTIONS');
  await using model = await loadModel({ path: values.model, backend: backendOption(values.backend) });
  const prompts: (string | number[])[] = values.prompts ? readPromptFile(model, values.prompts) : DEFAULT_PROMPTS;
  const traces = int(values.traces, 'traces', Math.min(8, prompts.length));
  const maxTokens = int(values['max-tokens'], 'max-tokens', 256);
  const contextSize = int(values.context, 'context', Math.min(model.info.nCtxTrain || 4096, 4096));
  const threads = values.threads ? int(values.threads, 'threads', 1) : undefined;
  const tty = process.stderr.isTTY && !values.json;
  const results = await runFidelity(model, {
    configs, prompts: prompts.slice(0, traces), maxTokens, contextSize, ...(threads ? { threads } : {}), stopAtEog: values['stop-at-eog'] === true,
    onProgress: tty ? (d, t) => { if (d % 16 === 0 || d === t) process.stderr.write(`\r  replaying ${d}/${t} positions`); } : undefined,
  });
  if (tty) process.stderr.write('\n');
  const table = `model ${values.model}: ${traces} traces × ${values['stop-at-eog'] ? `up to ${maxTokens} tokens (to end of generation)` : `${maxTokens} tokens`}, greedy full-cache references replayed token by token\n` + formatFidelityTable(results);
  if (values.json) {
    for (const r of results) process.stdout.write(JSON.stringify({ model: values.model, ...r, effective: undefined, retention: r.effective.heads.retention }) + '\n');
    process.stderr.write(table);
  } else {
    process.stdout.write(table);
  }
  if (values.chart) writeFileSync(values.chart, fidelityChartSvg(results));
  return 0;
}

/** `--kv` values: JSON objects (validated) or preset names; the label is the preset name or the JSON text. */
export function parseKvConfigs(texts: string[], profile: string | undefined): { label: string; kv: KvOptions }[] {
  return texts.map((text) => {
    const preset = kvPreset(text.trim());
    if (preset) return { label: preset.name, kv: preset.build(profile) };
    let obj: unknown;
    try { obj = JSON.parse(text); } catch {
      throw new LlmError(`--kv: expected a JSON object or a preset name (${KV_PRESETS.map((p) => p.name).join(', ')}), received: ${text}`, 'ERR_INVALID_OPTIONS');
    }
    parseOptions(KvOptionsSchema, obj, 'kv');
    return { label: text.length > 48 ? `${text.slice(0, 45)}...` : text, kv: obj as KvOptions };
  });
}

interface AccuracyArgs {
  model?: string; kv?: string[]; profile?: string; tasks?: string; data?: string[]; n?: string; 'max-tokens'?: string;
  threads?: string; context?: string; json?: boolean; 'loop-guard'?: boolean; backend?: string;
}

/** `thinkcache eval --accuracy`: P2 over the tiny reasoner's held-out tasks and/or JSONL problem files. */
async function cmdAccuracy(values: AccuracyArgs): Promise<number> {
  const modelPath = values.model ?? tinyModelPath();
  const n = int(values.n, 'n', 100);
  const problems: AccuracyProblem[] = [];
  const tiny = values.tasks ?? (values.data?.length ? undefined : 'tiny');
  if (tiny) {
    for (const t of tiny === 'tiny' ? TINY_TASKS : tiny.split(',').map((x) => x.trim().replace(/^tiny:/, ''))) problems.push(...loadTinyProblems(t, n));
  }
  for (const f of values.data ?? []) problems.push(...loadJsonlProblems(f, n));
  const configs = values.kv?.length ? parseKvConfigs(values.kv, values.profile) : [{ label: 'full', kv: {} }];
  if (!configs.some((c) => c.label === 'full')) configs.unshift({ label: 'full', kv: {} });
  const maxTokens = int(values['max-tokens'], 'max-tokens', values.data?.length ? 4096 : 2048);
  await using model = await loadModel({ path: modelPath, backend: backendOption(values.backend) });
  const tty = process.stderr.isTTY && !values.json;
  let done = 0;
  const total = problems.length * configs.length;
  const { summaries } = await runAccuracy(model, {
    configs, problems, maxTokens, ...(values.context ? { contextSize: int(values.context, 'context', 4096) } : {}),
    ...(values.threads ? { threads: int(values.threads, 'threads', 1) } : {}),
    loopGuard: values['loop-guard'] ? { window: 400, minDistinct: 40 } : false,
    onResult: (r) => {
      done++;
      if (values.json) process.stdout.write(JSON.stringify({ type: 'problem', ...r }) + '\n');
      else if (tty) process.stderr.write(`\r  ${done}/${total} problems (${r.config})`.padEnd(60));
    },
  });
  if (tty) process.stderr.write('\n');
  const table = `model ${modelPath}: ${problems.length} problems, greedy, at most ${maxTokens} tokens each\n` + formatAccuracyTable(summaries);
  if (values.json) {
    for (const s of summaries) process.stdout.write(JSON.stringify({ type: 'summary', model: modelPath, ...s, effective: undefined, retention: s.effective.heads.retention }) + '\n');
    process.stderr.write(table);
  } else {
    process.stdout.write(table);
  }
  return 0;
}
