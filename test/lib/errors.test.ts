// The error-code contract between the native core and the TypeScript classes (STYLE §2.5): every code the
// addon can produce maps to its own typed class with that `code`, and a native failure arrives as that class
// with the caller's stack.
import { describe, expect, it } from 'vitest';
import { getAddon } from '../../lib/binding.js';
import {
  AbortError, BusyError, ContextFullError, DisposedError, fromNativeError, InvalidOptionsError, LlmError, NATIVE_ERROR_CODES,
} from '../../lib/errors.js';
import { GgufFormatError, loadModel } from '../../lib/index.js';

describe('error codes', () => {
  it("the TS list equals the addon's listErrorCodes() (minus OK)", () => {
    expect([...NATIVE_ERROR_CODES].sort()).toEqual(getAddon().listErrorCodes().filter((c) => c !== 'OK').sort());
  });

  it('each native code becomes an LlmError subclass carrying that code', () => {
    const seen = new Set<string>();
    for (const code of NATIVE_ERROR_CODES) {
      const e = fromNativeError(Object.assign(new Error(`boom ${code}`), { code }));
      expect(e).toBeInstanceOf(LlmError);
      expect((e as LlmError).code).toBe(code);
      expect(e.message).toBe(`boom ${code}`);
      seen.add(e.constructor.name + ':' + code);
    }
    expect(seen.size).toBe(NATIVE_ERROR_CODES.length);
    expect(fromNativeError(Object.assign(new Error('x'), { code: 'ERR_BUSY' }))).toBeInstanceOf(BusyError);
    expect(fromNativeError(Object.assign(new Error('x'), { code: 'ERR_ABORTED' }))).toBeInstanceOf(AbortError);
    expect(fromNativeError(Object.assign(new Error('x'), { code: 'ERR_DISPOSED' }))).toBeInstanceOf(DisposedError);
    expect(fromNativeError(Object.assign(new Error('x'), { code: 'ERR_CONTEXT_FULL' }))).toBeInstanceOf(ContextFullError);
    expect(fromNativeError(Object.assign(new Error('x'), { code: 'ERR_INVALID_ARG' }))).toBeInstanceOf(InvalidOptionsError);
  });

  it('a native failure arrives typed, with the stack of the call site', async () => {
    const err = await loadModel({ path: new URL(import.meta.url).pathname }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(GgufFormatError);
    expect((err as Error).stack).toContain('errors.test.ts');
  });
});
