/**
 * `thinkcache eval`: fidelity of KV configurations against the full cache (ALGORITHMS.md §5, P1).
 *   thinkcache eval --model M --kv '{"heads":{"profile":"p.tsv","sparsity":0.5}}' [--kv ...]
 *                   [--profile P.tsv --sweep-sparsity 0,0.25,0.5,0.75 --stream 16+48,4+28]
 *                   [--traces N] [--max-tokens T] [--prompts FILE] [--threads N] [--context N]
 *                   [--json] [--chart out.svg]
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { LlmError } from '../errors.js';
import { DEFAULT_PROMPTS, fidelityChartSvg, runFidelity, type FidelityResult } from '../eval/fidelity.js';
import { KvOptionsSchema, type KvOptions } from '../kv/kv-options.js';
import { loadModel } from '../Model.js';
import { parseOptions } from '../options.js';

function int(v: string | undefined, name: string, def: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new LlmError(`--${name}: expected a positive integer, received "${v}"`, 'ERR_INVALID_OPTIONS');
  return n;
}

function kb(n: number): string { return n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(2)} MiB` : `${(n / 1024).toFixed(1)} KiB`; }

export function formatFidelityTable(rs: FidelityResult[]): string {
  const head = ['config', 'KV bytes (mean)', 'of full', 'KL mean', 'KL p95', 'top-1', 'ΔNLL', 'mean rank'];
  const rows = rs.map((r) => [r.label, kb(r.kvBytes), `${(100 * r.kvFraction).toFixed(1)}%`, r.klMean.toExponential(2), r.klP95.toExponential(2),
    `${(100 * r.top1Agreement).toFixed(1)}%`, r.deltaNll.toFixed(4), r.meanRank.toFixed(2)]);
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ');
  return [line(head), ...rows.map(line)].join('\n') + '\n';
}

export async function cmdEval(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: 'string', short: 'm' }, kv: { type: 'string', multiple: true }, profile: { type: 'string' },
      'sweep-sparsity': { type: 'string' }, stream: { type: 'string' }, traces: { type: 'string' }, 'max-tokens': { type: 'string' },
      prompts: { type: 'string' }, threads: { type: 'string' }, context: { type: 'string' }, json: { type: 'boolean' }, chart: { type: 'string' },
    },
    strict: true,
  });
  if (!values.model) throw new LlmError('thinkcache eval: --model is required', 'ERR_INVALID_OPTIONS');
  const configs: { label: string; kv: KvOptions }[] = [];
  for (const text of values.kv ?? []) {
    let obj: unknown;
    try { obj = JSON.parse(text); } catch { throw new LlmError(`--kv: not valid JSON: ${text}`, 'ERR_INVALID_OPTIONS'); }
    parseOptions(KvOptionsSchema, obj, 'kv');
    configs.push({ label: text.length > 48 ? `${text.slice(0, 45)}...` : text, kv: obj as KvOptions });
  }
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
  let prompts: string[] = DEFAULT_PROMPTS;
  if (values.prompts) {
    prompts = readFileSync(values.prompts, 'utf8').split('\n').filter((l) => l.trim()).map((l) => {
      try { const o = JSON.parse(l); return String(o.question ?? o.problem ?? o.prompt ?? l); } catch { return l; }
    });
  }
  const traces = int(values.traces, 'traces', Math.min(8, prompts.length));
  const maxTokens = int(values['max-tokens'], 'max-tokens', 256);
  await using model = await loadModel({ path: values.model });
  const contextSize = int(values.context, 'context', Math.min(model.info.nCtxTrain || 4096, 4096));
  const threads = values.threads ? int(values.threads, 'threads', 1) : undefined;
  const tty = process.stderr.isTTY && !values.json;
  const results = await runFidelity(model, {
    configs, prompts: prompts.slice(0, traces), maxTokens, contextSize, ...(threads ? { threads } : {}),
    onProgress: tty ? (d, t) => { if (d % 16 === 0 || d === t) process.stderr.write(`\r  replaying ${d}/${t} positions`); } : undefined,
  });
  if (tty) process.stderr.write('\n');
  const table = `model ${values.model}: ${traces} traces × ${maxTokens} tokens, greedy full-cache references replayed token by token\n` + formatFidelityTable(results);
  if (values.json) {
    for (const r of results) process.stdout.write(JSON.stringify({ model: values.model, ...r, effective: undefined, retention: r.effective.heads.retention }) + '\n');
    process.stderr.write(table);
  } else {
    process.stdout.write(table);
  }
  if (values.chart) writeFileSync(values.chart, fidelityChartSvg(results));
  return 0;
}
