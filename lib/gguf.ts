/** GGUF metadata access through the native, bounds-checked reader. */
import { getAddon } from './binding.js';
import type { AddonGgufInfo, GgufValue } from './addon-types.js';
import { callNative } from './errors.js';

export type { GgufValue, AddonGgufInfo as GgufInfo, AddonGgufTensor as GgufTensorInfo } from './addon-types.js';

/**
 * Reads a GGUF file's header, metadata and tensor table (not the weights) without blocking the event
 * loop. Malformed files reject with GgufFormatError naming the field and the values.
 * @example const info = await readGgufInfo('model.gguf'); info.metadata['general.architecture']
 */
export async function readGgufInfo(path: string): Promise<AddonGgufInfo & { metadata: Record<string, GgufValue> }> {
  if (typeof path !== 'string' || path.length === 0) throw new TypeError('readGgufInfo: path must be a non-empty string');
  const info = await callNative(() => getAddon().readGgufMetadata(path, true));
  return info as AddonGgufInfo & { metadata: Record<string, GgufValue> };
}

/** Flat `{ key: value }` metadata, as the tokenizer consumes it. */
export async function readGgufMetadata(path: string): Promise<Record<string, GgufValue>> {
  return (await readGgufInfo(path)).metadata;
}
