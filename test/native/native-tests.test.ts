// Builds the C++ test binary (no Node dependency) with CMake and runs it: op tests against the scalar
// references, the GGUF reader fuzz test, the stories260K golden decode.
import { fileURLToPath } from 'node:url';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('../..', import.meta.url));
const hasCmake = spawnSync('cmake', ['--version']).status === 0;
if (!hasCmake) console.warn('native-tests skipped: cmake is not installed (apt install cmake)');

describe.skipIf(!hasCmake)('native-tests (C++)', () => {
  it('builds and passes', () => {
    const build = join(root, 'build-native');
    // compiler output can run to megabytes on a fresh build: keep it (64 MiB) and show it only on failure
    const run = (args: string[]) => {
      const b = spawnSync('cmake', args, { encoding: 'utf8', maxBuffer: 64 << 20 });
      if (b.status !== 0) throw new Error(`cmake ${args.join(' ')} failed (${b.error?.message ?? `status ${b.status}`}):\n${b.stdout}\n${b.stderr}`);
    };
    run(['-S', root, '-B', build, '-DTHINKCACHE_ADDON=OFF', '-DCMAKE_BUILD_TYPE=Release']);
    run(['--build', build, '-j', '2', '--target', 'native-tests']);
    const r = spawnSync(join(build, 'native-tests'), [], { cwd: root, encoding: 'utf8' });
    if (r.status !== 0) console.error(r.stdout, r.stderr);
    expect(r.stdout).toMatch(/(\d+)\/\1 tests passed/);
    expect(r.status).toBe(0);
  }, 900_000);
});
