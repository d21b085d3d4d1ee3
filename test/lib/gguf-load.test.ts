// Loading bad files through the public API: hundreds of truncated and byte-flipped fixture files never
// crash the process or hang; each load either succeeds or rejects with a typed LlmError. Plus the
// specific errors a user meets: missing file, not a GGUF, unsupported architecture.
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FileAccessError, GgufFormatError, LlmError, loadModel, readGgufInfo, UnsupportedModelError } from '../../lib/index.js';
import { ensureFixture } from '../fixtures/make-tiny-gguf.js';
import { gv, writeGgufSync } from '../fixtures/gguf-writer.js';
import { getAddon } from '../../lib/binding.js';
import { haveSharedFile, sharedData, stories260K } from '../helpers/shared-data.js';

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

  it('string arrays cross the boundary packed: the same strings as one by one, invalid UTF-8 included', async () => {
    const addon = getAddon();
    const texts = ['', 'a', 'Ġhello', 'é', '中文', '🦙', 'x🦙y', 'x'.repeat(1000), '\u2581▁', 'BAD1', 'tail'];
    const p = join(dir, 'strings.gguf');
    writeGgufSync(p, {
      metadata: [
        ['general.architecture', gv.str('llama')],
        ['valid', gv.arr('STRING', texts)],
        ['broken', gv.arr('STRING', texts.map((t) => t.replace('BAD1', 'BAD2')))],
        ['__proto__', gv.arr('STRING', ['not', 'a prototype'])],
      ],
      tensors: [],
    });
    // 'BAD2' becomes 0xC3 '(' 'D' '2': a lead byte without its continuation byte, in the second array only
    const bytes = readFileSync(p);
    const at = bytes.indexOf(Buffer.from('BAD2'));
    bytes[at] = 0xc3; bytes[at + 1] = 0x28;
    writeFileSync(p, bytes);
    const raw = (await addon.readGgufMetadata(p, true, true)).metadata!;
    expect(raw['valid']).toHaveProperty('packedStrings');           // one string + offsets
    expect(Array.isArray(raw['broken'])).toBe(true);                // invalid UTF-8: one by one, V8 decodes it
    const plain = (await addon.readGgufMetadata(p, true, false)).metadata!;
    const md = (await readGgufInfo(p)).metadata;                    // (packed, then unpacked)
    expect(md['valid']).toEqual(texts);
    expect(md['broken']).toEqual(plain['broken']);
    expect((md['broken'] as string[])[9]).toBe('\uFFFD(D2');
    expect(Object.getPrototypeOf(md)).toBe(Object.prototype);
    expect(Object.getOwnPropertyDescriptor(md, '__proto__')?.value).toEqual(['not', 'a prototype']);
    // every GGUF at hand: fixtures, and the real vocabularies and model when ../shared/data is there
    const files = [ensureFixture('llama', 'q8_0'), ensureFixture('qwen2', 'f16'), ensureFixture('qwen3', 'f32')];
    const vocabDir = join(sharedData, 'tokenizers', 'llama.cpp-vocab');
    if (existsSync(vocabDir)) files.push(...readdirSync(vocabDir).filter((f) => f.endsWith('.gguf')).map((f) => join(vocabDir, f)));
    if (haveSharedFile(stories260K, 'stories260K in the packed-metadata check')) files.push(stories260K);
    for (const f of files) expect((await readGgufInfo(f)).metadata, f).toEqual((await addon.readGgufMetadata(f, true, false)).metadata);
    const model = await loadModel({ path: ensureFixture('qwen2', 'f16') });
    expect(model.metadata).toEqual((await addon.readGgufMetadata(ensureFixture('qwen2', 'f16'), true, false)).metadata);
    await model.dispose();
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
