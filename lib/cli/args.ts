/** Numeric command-line flags, checked before anything loads; the error names the flag and what it received. */
import { LlmError } from '../errors.js';

/** `--name` as a number (an integer with `int`), or undefined when absent. */
export function numArg(v: string | undefined, name: string, int: boolean): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || (int && !Number.isInteger(n))) {
    throw new LlmError(`--${name}: expected ${int ? 'an integer' : 'a number'}, received "${v}"`, 'ERR_INVALID_OPTIONS');
  }
  return n;
}

/** `--name` as an integer in [min, max] (default: a positive one), or `def` when absent. */
export function intArg(v: string | undefined, name: string, def: number, min = 1, max = 2 ** 31 - 1): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (v.trim() === '' || !Number.isInteger(n) || n < min || n > max) {
    const range = min === 1 && max === 2 ** 31 - 1 ? 'a positive integer' : min === 0 && max === 2 ** 31 - 1 ? 'a non-negative integer' : `an integer in [${min}, ${max}]`;
    throw new LlmError(`--${name}: expected ${range}, received "${v}"`, 'ERR_INVALID_OPTIONS');
  }
  return n;
}
