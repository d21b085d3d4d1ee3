/**
 * `thinkcache calibrate-rotation --model M [--out FILE] [--prompts FILE] [--traces N] [--max-tokens T] [--threads N] [--json]`
 * RotateKV's key channel permutation (ALGORITHMS.md §3.3) from the built-in calibration text plus the model's
 * own greedy traces (or --prompts), written to a sidecar keyed by the model's fingerprint. Contexts with rot
 * keys pick up `<model>.rotkv.json` automatically (kv.storage.permutation 'auto'), or take a path.
 */
import { parseArgs } from 'node:util';
import { LlmError } from '../errors.js';
import { DEFAULT_PROMPTS } from '../eval/fidelity.js';
import { readPromptFile } from '../eval/prompts.js';
import { BUILTIN_CALIBRATION_TEXT, calibrateRotation, defaultSidecarPath, saveRotationSidecar } from '../kv/rotation.js';
import { loadModel } from '../Model.js';
import { intArg } from './args.js';

export const CALIBRATE_ROTATION_USAGE = `  thinkcache calibrate-rotation --model PATH [--out FILE] [--prompts FILE] [--traces N] [--max-tokens T] [--json]
`;

export async function cmdCalibrateRotation(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: 'string', short: 'm' }, out: { type: 'string', short: 'o' }, prompts: { type: 'string' }, traces: { type: 'string' },
      'max-tokens': { type: 'string' }, threads: { type: 'string' }, json: { type: 'boolean' },
    },
    strict: true,
  });
  if (!values.model) throw new LlmError('thinkcache calibrate-rotation: --model is required', 'ERR_INVALID_OPTIONS');
  const maxTokens = intArg(values['max-tokens'], 'max-tokens', 256, 0);
  const threads = values.threads ? intArg(values.threads, 'threads', 1, 0) : undefined;
  await using model = await loadModel({ path: values.model, backend: 'cpu' });  // calibration hooks run on the CPU
  const extra = values.prompts ? readPromptFile(model, values.prompts) : DEFAULT_PROMPTS;
  const traces = intArg(values.traces, 'traces', Math.min(8, extra.length), 0);
  const prompts = [BUILTIN_CALIBRATION_TEXT, ...extra.slice(0, traces)];
  const tty = process.stderr.isTTY && !values.json;
  const cal = await calibrateRotation(model, {
    prompts, maxTokens, ...(threads ? { threads } : {}),
    onProgress: tty ? (d, t) => process.stderr.write(`\r  ${d}/${t} passes`) : undefined,
  });
  if (tty) process.stderr.write('\n');
  const out = values.out ?? defaultSidecarPath(values.model);
  saveRotationSidecar(out, cal, values.model);
  const moved = (() => { let n = 0; for (let i = 0; i < cal.perm.length; i++) if (cal.perm[i] !== i % cal.headDim) n++; return n / cal.perm.length; })();
  if (values.json) {
    process.stdout.write(JSON.stringify({ out, fingerprint: cal.fingerprint, source: cal.source, tokens: cal.tokens, nLayer: cal.nLayer, nHeadKv: cal.nHeadKv, headDim: cal.headDim, movedChannels: moved }) + '\n');
  } else {
    process.stdout.write(`wrote ${out}: ${cal.nLayer} layers × ${cal.nHeadKv} KV heads × ${cal.headDim} channels, ${cal.source}; ` +
      `${(100 * moved).toFixed(0)}% of channels move; model ${cal.fingerprint}\n`);
  }
  return 0;
}
