/*
 * Test-only GGUF metadata reader: reads a GGUF header through node-llama-cpp's pure-TS parser
 * (`readGgufFileInfo`) and flattens its nested `metadata` object into the dotted GGUF keys that
 * `readGgufMetadata(path)` from the native reader will return (`"tokenizer.ggml.tokens"`, ...).
 * Invariants: arrays (and typed arrays) are kept as-is, never flattened; only plain objects are walked.
 * The integrator swaps this for the native reader once it exists.
 */
import { readGgufFileInfo } from 'node-llama-cpp';

function isPlainObject(value: unknown): value is Record<string, unknown> {
    if (value === null || typeof value !== 'object') return false;
    if (Array.isArray(value) || ArrayBuffer.isView(value)) return false;
    const proto = Object.getPrototypeOf(value);
    return proto === Object.prototype || proto === null;
}

function flattenInto(out: Record<string, unknown>, prefix: string, value: unknown): void {
    if (isPlainObject(value)) {
        for (const [key, child] of Object.entries(value)) {
            flattenInto(out, prefix === '' ? key : `${prefix}.${key}`, child);
        }
        return;
    }
    out[prefix] = value;
}

/** Reads a GGUF file's metadata as a flat object keyed by GGUF key. */
export async function readGgufMetadataForTest(path: string): Promise<Record<string, unknown>> {
    const info = await readGgufFileInfo(path, { readTensorInfo: false, logWarnings: false, sourceType: 'filesystem' });
    const flat: Record<string, unknown> = {};
    flattenInto(flat, '', info.metadata as unknown);
    return flat;
}
