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

describe('the addon boundary', () => {
  it('numbers must be integers in range: no silent Int32 wrap (removeFrom(2 ** 32) is not removeFrom(0))', async () => {
    const { ensureFixture } = await import('../fixtures/make-tiny-gguf.js');
    await using model = await loadModel({ path: ensureFixture('llama', 'f32') });
    await using ctx = await model.createContext({ contextSize: 64, threads: 1 });
    const seq = ctx.acquireSequence();
    await seq.evaluate([1, 2, 3, 4, 5]);
    for (const bad of [2 ** 32, Infinity, NaN, 1.5, -1]) {
      expect(() => seq._native.removeFrom(bad)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
    }
    expect(() => seq._native.removeFromAsync(NaN)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
    expect(seq._native.nTokens()).toBe(5);  // (and the sequence is not left busy)
    expect(() => getAddon().kvCodecBlock('f16', 2 ** 32 + 64, 32, true)).toThrow(/dim: expected an integer in \[1, 4096\]/);
    // tokens in a view of a SharedArrayBuffer are read like any other Int32Array; a Uint32 id prints unsigned
    const shared = new Int32Array(new SharedArrayBuffer(8));
    shared.set([6, 7]);
    await seq._native.eval(shared, { logits: true });
    expect(seq._native.nTokens()).toBe(7);
    expect(() => seq._native.eval(Uint32Array.of(4294967295))).toThrow(/token id 4294967295 at index 0/);
  });

  it('a sequence whose bookkeeping cannot be allocated is an OutOfMemoryError, not std::terminate', async () => {
    const { ensureFixture } = await import('../fixtures/make-tiny-gguf.js');
    await using model = await loadModel({ path: ensureFixture('llama', 'f32') });
    const n = model.info.nLayer * model.info.nHeadKv;
    // (past what zod allows: a snapkv query window of 2^31 - 1 queries per evicting layer, ~512 GB)
    const ctx = new (getAddon().AddonContext)(model._native, {
      contextSize: 64, threads: 1, retention: new Uint8Array(n).fill(2), streamSinks: 4, streamRecent: 8,
      eviction: { policy: 'snapkv', capacity: 32, window: 2 ** 31 - 1 },
    });
    expect(() => new (getAddon().AddonSequence)(ctx)).toThrow(expect.objectContaining({ code: 'ERR_OOM_HOST' }));
    ctx.dispose();
  });
});
