// Loading bad files through the public API: hundreds of truncated and byte-flipped fixture files never
// crash the process or hang; each load either succeeds or rejects with a typed LlmError. Plus the
// specific errors a user meets: missing file, not a GGUF, unsupported architecture.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FileAccessError, GgufFormatError, LlmError, loadModel, readGgufInfo, UnsupportedModelError } from '../../lib/index.js';
import { ensureFixture } from '../fixtures/make-tiny-gguf.js';
import { gv, writeGgufSync } from '../fixtures/gguf-writer.js';

const dir = mkdtempSync(join(tmpdir(), 'thinkcache-gguf-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function rng(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('loading malformed GGUF files', () => {
  it('400 truncations and byte flips: always a clean load or a typed error', async () => {
    const base = readFileSync(ensureFixture('llama', 'q8_0'));
    const info = await readGgufInfo(ensureFixture('llama', 'q8_0'));
    const headerEnd = info.dataOffset; // metadata + tensor table: where the counts and offsets live
    const rand = rng(99);
    const outcomes: Record<string, number> = {};
    for (let i = 0; i < 400; i++) {
      let buf = Buffer.from(base);
      const kind = i % 4;
      if (kind === 0) {
        buf = buf.subarray(0, Math.floor(rand() * buf.length));
      } else {
        const flips = 1 + Math.floor(rand() * 6);
        for (let k = 0; k < flips; k++) {
          const at = Math.floor(rand() * (kind === 3 ? buf.length : headerEnd));
          buf[at] = kind === 2 ? 0xff : buf[at]! ^ (1 << Math.floor(rand() * 8));
        }
      }
      const path = join(dir, `m${i}.gguf`);
      writeFileSync(path, buf);
      try {
        const model = await loadModel({ path });
        outcomes.loaded = (outcomes.loaded ?? 0) + 1;
        await model.dispose();
      } catch (err) {
        if (!(err instanceof LlmError)) throw new Error(`case ${i}: untyped error ${String(err)}`, { cause: err });
        expect(err.message.length).toBeGreaterThan(10);
        outcomes[err.code] = (outcomes[err.code] ?? 0) + 1;
      }
      rmSync(path);
    }
    console.log('malformed GGUF outcomes:', outcomes);
    expect(outcomes.ERR_GGUF_FORMAT).toBeGreaterThan(100);
  });

  it('a missing file is a FileAccessError naming the path', async () => {
    await expect(loadModel({ path: join(dir, 'nope.gguf') })).rejects.toSatisfy((e: unknown) => e instanceof FileAccessError && /nope\.gguf/.test((e as Error).message));
  });

  it('a non-GGUF file is a GgufFormatError about the magic', async () => {
    const p = join(dir, 'text.gguf');
    writeFileSync(p, 'this is not a gguf file at all, just some text');
    await expect(loadModel({ path: p })).rejects.toSatisfy((e: unknown) => e instanceof GgufFormatError && /magic/.test((e as Error).message));
  });

  it('an unsupported architecture lists the supported ones', async () => {
    const p = join(dir, 'gpt2.gguf');
    writeGgufSync(p, { metadata: [['general.architecture', gv.str('gpt2')]], tensors: [] });
    await expect(loadModel({ path: p })).rejects.toSatisfy(
      (e: unknown) => e instanceof UnsupportedModelError && /gpt2/.test((e as Error).message) && /llama, qwen2, qwen3/.test((e as Error).message),
    );
  });

  it('a "__proto__" metadata key is an own key, not the metadata object\'s prototype', async () => {
    const p = join(dir, 'proto.gguf');
    writeGgufSync(p, { metadata: [['general.architecture', gv.str('gpt2')], ['__proto__', gv.str('not a prototype')], ['constructor', gv.u32(7)]], tensors: [] });
    const md = (await readGgufInfo(p)).metadata;
    expect(Object.getPrototypeOf(md)).toBe(Object.prototype);
    expect(Object.getOwnPropertyDescriptor(md, '__proto__')?.value).toBe('not a prototype');
    expect(md['constructor']).toBe(7);
    expect(md['general.architecture']).toBe('gpt2');
  });

    it('the error keeps the caller\'s stack', async () => {
    const err = (await loadModel({ path: join(dir, 'nope.gguf') }).catch((e: Error) => e)) as Error;
    expect(err.stack).toMatch(/gguf-load\.test\.ts/);
  });
});
