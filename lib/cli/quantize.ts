/**
 * `thinkcache quantize IN.gguf OUT.gguf --type q4_k_m|q8_0|q4_0|... [--threads N] [--json]`: our
 * llama-quantize (reference quantizers, llama.cpp's per-tensor type choice, metadata carried over).
 */
import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';
import { LlmError } from '../errors.js';
import { QUANTIZE_TYPES, quantizeGguf } from '../gguf.js';

export const QUANTIZE_USAGE = `  thinkcache quantize IN.gguf OUT.gguf --type ${QUANTIZE_TYPES.slice(0, 17).join('|')} [--threads N] [--json]\n`;

function mib(n: number): string { return `${(n / (1 << 20)).toFixed(1)} MiB`; }

export async function cmdQuantize(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: { type: { type: 'string', short: 't' }, threads: { type: 'string' }, json: { type: 'boolean' } },
    allowPositionals: true,
    strict: true,
  });
  if (positionals.length !== 2 || !values.type) {
    process.stderr.write(`thinkcache quantize: IN.gguf, OUT.gguf and --type are required\n\nUsage:\n${QUANTIZE_USAGE}`);
    return 2;
  }
  const type = values.type.toLowerCase();
  if (!(QUANTIZE_TYPES as readonly string[]).includes(type)) {
    throw new LlmError(`--type: expected one of ${QUANTIZE_TYPES.join(', ')}, received "${values.type}"`, 'ERR_INVALID_OPTIONS');
  }
  const threads = values.threads === undefined ? Math.max(1, availableParallelism()) : Number(values.threads);
  if (!Number.isInteger(threads) || threads <= 0) throw new LlmError(`--threads: expected a positive integer, received "${values.threads}"`, 'ERR_INVALID_OPTIONS');
  const [inPath, outPath] = positionals as [string, string];
  const t0 = performance.now();
  const r = await quantizeGguf(inPath, outPath, { type, threads });
  const seconds = (performance.now() - t0) / 1000;
  if (values.json) {
    process.stdout.write(JSON.stringify({ in: inPath, out: outPath, type, seconds, ...r }) + '\n');
    return 0;
  }
  const counts: Record<string, number> = {};
  for (const t of r.tensors) counts[t.to] = (counts[t.to] ?? 0) + 1;
  process.stdout.write(`${outPath}: ${type} (general.file_type ${r.fileType}), ${mib(r.bytesIn)} -> ${mib(r.bytesOut)} in ${seconds.toFixed(1)} s; ` +
    `tensors ${Object.entries(counts).map(([k, v]) => `${v}× ${k}`).join(', ')}\n`);
  return 0;
}
