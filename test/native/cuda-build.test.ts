// CI without a GPU (issue 8): where nvcc is installed, the CUDA backend compiles (sm_90a only, to keep the
// build short), and the CUDA test binary runs with every GPU test printing why it skipped — or passing,
// on a machine with a device. Without nvcc or cmake the test skips with the reason.
import { fileURLToPath } from 'node:url';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cmake, hasCmake } from '../helpers/cmake.js';

const root = fileURLToPath(new URL('../..', import.meta.url));
const nvcc = ['nvcc', '/usr/local/cuda/bin/nvcc'].find((p) => spawnSync(p, ['--version']).status === 0);
const why = !hasCmake ? 'cmake is not installed' : !nvcc ? 'nvcc (the CUDA toolkit) is not installed' : '';
if (why) console.warn(`cuda build skipped: ${why}`);

describe.skipIf(Boolean(why))('CUDA backend (nvcc build, GPU tests skip without a device)', () => {
  it('compiles and its tests pass or skip with a reason', () => {
    const build = join(root, 'build-cuda-ci');
    cmake(['-S', root, '-B', build, '-DTHINKCACHE_CUDA=ON', '-DTHINKCACHE_ADDON=OFF', '-DCMAKE_BUILD_TYPE=Release',
      '-DTHINKCACHE_CUDA_GENCODE=-gencode=arch=compute_90a,code=sm_90a', `-DCMAKE_CUDA_COMPILER=${nvcc === 'nvcc' ? 'nvcc' : nvcc}`]);
    cmake(['--build', build, '-j', '2', '--target', 'native-tests', 'decode-bench-cuda']);
    expect(existsSync(join(build, 'decode-bench-cuda'))).toBe(true);
    const r = spawnSync(join(build, 'native-tests'), ['-o', 'cuda/'], { cwd: root, encoding: 'utf8' });
    if (r.status !== 0) console.error(r.stdout, r.stderr);
    expect(r.status).toBe(0);
    const m = r.stdout.match(/(\d+)\/\1 tests passed/);
    expect(m).not.toBeNull();
    const n = Number(m![1]);
    expect(n).toBeGreaterThanOrEqual(13);
    // each CUDA test either ran (OK) or said why it skipped
    const skipped = (r.stdout.match(/skipped: no CUDA device \(/g) ?? []).length;
    const ok = (r.stdout.match(/^cuda\/.*\bOK \(/gm) ?? []).length;
    expect(skipped + ok).toBe(n);
    if (skipped) console.log(`cuda tests: ${skipped}/${n} skipped (${r.stdout.match(/skipped: no CUDA device \(([^)]*)/)?.[1]})`);
    const bench = spawnSync(join(build, 'decode-bench-cuda'), ['--contexts', '1024', '--type', 'q4_K', '--kv', 'f16,rot2', '--steps', '2'],
      { cwd: root, encoding: 'utf8' });
    expect(bench.status).toBe(0);
    if (skipped) expect(bench.stdout).toMatch(/^skipped: no CUDA device/);
  }, 1_500_000);
});
