/**
 * `thinkcache profile-heads --model M --out P.tsv [--method wse|mean-qk|ablation] [--traces N] [--max-tokens T] [--sinks S] [--recent R]`
 * Training-free head calibration on the model's own greedy traces: window-substitution error (§1.12 b,
 * default), the mean-query/mean-key attention curve (§1.12 a), or ablation (the KL of streaming each KV
 * head alone; one decode pass per KV head).
 */
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { LlmError } from '../errors.js';
import { DEFAULT_PROMPTS } from '../eval/fidelity.js';
import { readPromptFile } from '../eval/prompts.js';
import { calibrateHeadProfile } from '../kv/calibrate.js';
import { formatHeadProfile } from '../kv/head-profile.js';
import { loadModel } from '../Model.js';
import { intArg } from './args.js';

export async function cmdProfileHeads(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: 'string', short: 'm' }, out: { type: 'string', short: 'o' }, traces: { type: 'string' }, 'max-tokens': { type: 'string' },
      sinks: { type: 'string' }, recent: { type: 'string' }, prompts: { type: 'string' }, threads: { type: 'string' }, json: { type: 'boolean' },
      method: { type: 'string', default: 'wse' },
    },
    strict: true,
  });
  if (!values.model || !values.out) throw new LlmError('thinkcache profile-heads: --model and --out are required', 'ERR_INVALID_OPTIONS');
  if (values.method !== 'wse' && values.method !== 'mean-qk' && values.method !== 'ablation') {
    throw new LlmError(`--method: expected wse, mean-qk or ablation, received "${values.method}"`, 'ERR_INVALID_OPTIONS');
  }
  await using model = await loadModel({ path: values.model, backend: 'cpu' });  // calibration hooks run on the CPU
  const prompts: (string | number[])[] = values.prompts ? readPromptFile(model, values.prompts) : DEFAULT_PROMPTS;
  const traces = intArg(values.traces, 'traces', Math.min(8, prompts.length), 0);
  const r = await calibrateHeadProfile(model, {
    prompts: prompts.slice(0, traces), maxTokens: intArg(values['max-tokens'], 'max-tokens', 256, 0), method: values.method,
    sinks: intArg(values.sinks, 'sinks', 16, 0), recent: intArg(values.recent, 'recent', 64, 0), ...(values.threads ? { threads: intArg(values.threads, 'threads', 1, 0) } : {}),
    onProgress: process.stderr.isTTY && !values.json ? (d, t) => process.stderr.write(`\r  ${d}/${t} ${values.method === 'ablation' ? 'positions (every KV head streamed alone, in lockstep)' : 'passes'}`) : undefined,
  });
  if (process.stderr.isTTY && !values.json) process.stderr.write('\n');
  writeFileSync(values.out, formatHeadProfile(r.profile));
  const { nLayer, nHeadKv } = r.profile;
  if (values.json) {
    process.stdout.write(JSON.stringify({ out: values.out, method: r.method, source: r.profile.source, rawScores: Array.from(r.rawScores), traces: r.traces, tokens: r.tokens, nLayer, nHeadKv,
      scores: Array.from(r.profile.scores), meanError: Array.from(r.meanError), meanOutMass: Array.from(r.meanOutMass) }) + '\n');
  } else {
    process.stdout.write(`wrote ${values.out}: ${nLayer} layers × ${nHeadKv} KV heads from ${r.traces} traces (${r.tokens} tokens), ${r.profile.source}\n`);
    process.stdout.write(r.method === 'ablation' ? 'layer  per KV head: rank score (mean KL when streamed alone, -)\n'
      : 'layer  per KV head: rank score (mean window error, out-of-window attention mass)\n');
    for (let l = 0; l < nLayer; l++) {
      const cells = [];
      for (let h = 0; h < nHeadKv; h++) {
        const i = l * nHeadKv + h;
        cells.push(`${r.profile.scores[i]!.toFixed(2)} (${r.meanError[i]!.toExponential(1)}, ${r.meanOutMass[i]!.toFixed(3)})`);
      }
      process.stdout.write(`${String(l).padStart(5)}  ${cells.join('  ')}\n`);
    }
  }
  return 0;
}
