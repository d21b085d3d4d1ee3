// binding.gyp (node-gyp build) must list every non-CUDA native source that CMake globs, or the default
// `npm install` build would miss a file that the CMake build has.
import { fileURLToPath } from 'node:url';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('../..', import.meta.url));

function walk(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    return statSync(p).isDirectory() ? walk(p) : [p];
  });
}

describe('build: binding.gyp', () => {
  it('lists every native .cpp except CUDA sources', () => {
    const gyp = readFileSync(join(root, 'binding.gyp'), 'utf8');
    const listed = new Set([...gyp.matchAll(/"(native\/[^"]+\.cpp)"/g)].map((m) => m[1]));
    const onDisk = walk(join(root, 'native'))
      .map((p) => relative(root, p))
      .filter((p) => p.endsWith('.cpp') && !p.startsWith('native/cuda/'));
    expect([...listed].sort()).toEqual(onDisk.sort());
  });
});
