/** GGUF metadata access through the native, bounds-checked reader. */
import { getAddon } from './binding.js';
import type { AddonGgufInfo, AddonPackedStrings, GgufValue } from './addon-types.js';
import { callNative, InvalidOptionsError } from './errors.js';
import { runStepsAsync, type Steps } from './steps.js';

export type { GgufValue, AddonGgufInfo as GgufInfo, AddonGgufTensor as GgufTensorInfo } from './addon-types.js';

/**
 * Reads a GGUF file's header, metadata and tensor table (not the weights) without blocking the event
 * loop. Malformed files reject with GgufFormatError naming the field and the values.
 * @example const info = await readGgufInfo('model.gguf'); info.metadata['general.architecture']
 */
export async function readGgufInfo(path: string): Promise<AddonGgufInfo & { metadata: Record<string, GgufValue> }> {
  if (typeof path !== 'string' || path.length === 0) throw new TypeError('readGgufInfo: path must be a non-empty string');
  const info = await callNative(() => getAddon().readGgufMetadata(path, true, true));
  info.metadata = await runStepsAsync(unpackMetadataSteps(info.metadata ?? {}));
  return info as AddonGgufInfo & { metadata: Record<string, GgufValue> };
}

const isPacked = (v: unknown): v is AddonPackedStrings =>
  typeof v === 'object' && v !== null && !ArrayBuffer.isView(v) && !Array.isArray(v) && typeof (v as AddonPackedStrings).packedStrings === 'string';

/**
 * @internal Metadata read with `packed` (AddonModel.metadata, readGgufMetadata) with its string arrays split
 * into arrays again, in steps (a 150k-token vocabulary is ~300k strings).
 */
export function* unpackMetadataSteps(md: Record<string, GgufValue | AddonPackedStrings>): Steps<Record<string, GgufValue>> {
  for (const key of Object.keys(md)) {
    const v = md[key];
    if (!isPacked(v)) continue;
    const { packedStrings: text, ends } = v;
    const out = new Array<string>(ends.length);
    let a = 0;
    for (let i = 0; i < ends.length; i++) {
      const b = ends[i]!;
      out[i] = text.slice(a, b);
      a = b;
      if (i % 16384 === 16383) yield;
    }
    Object.defineProperty(md, key, { value: out, writable: true, enumerable: true, configurable: true });  // (a key named "__proto__" stays an own property)
  }
  return md as Record<string, GgufValue>;
}

/** Flat `{ key: value }` metadata, as the tokenizer consumes it. */
export async function readGgufMetadata(path: string): Promise<Record<string, GgufValue>> {
  return (await readGgufInfo(path)).metadata;
}

export type { AddonQuantizeResult as QuantizeResult } from './addon-types.js';

/** File types `quantizeGguf` writes (llama-quantize's names, lowercase). */
export const QUANTIZE_TYPES = [
  'q8_0', 'q4_0', 'q4_1', 'q5_0', 'q5_1', 'q2_k', 'q3_k_s', 'q3_k_m', 'q3_k_l', 'q4_k_s', 'q4_k_m', 'q5_k_s', 'q5_k_m',
  'q6_k', 'f16', 'bf16', 'f32', 'q3_k', 'q4_k', 'q5_k',
] as const;
export type QuantizeType = (typeof QUANTIZE_TYPES)[number];

/**
 * Quantizes a GGUF model into a new file, off the event loop, choosing per-tensor types as llama.cpp's
 * llama-quantize does (no importance matrix); metadata is carried over, general.file_type set.
 * @example await quantizeGguf('model-f16.gguf', 'model-q4_k_m.gguf', { type: 'q4_k_m' });
 */
export async function quantizeGguf(inPath: string, outPath: string, options: { type: QuantizeType | string; threads?: number }) {
  if (typeof inPath !== 'string' || inPath.length === 0) throw new TypeError('quantizeGguf: inPath must be a non-empty string');
  if (typeof outPath !== 'string' || outPath.length === 0) throw new TypeError('quantizeGguf: outPath must be a non-empty string');
  const threads = options.threads ?? 1;
  if (!Number.isInteger(threads) || threads < 1 || threads > 256) {
    throw new InvalidOptionsError(`quantizeGguf: threads must be an integer in [1, 256] (got ${String(threads)})`);
  }
  return callNative(() => getAddon().quantizeGguf(inPath, outPath, { type: options.type, threads }));
}
