// Builds the C++ test binary (no Node dependency) with CMake and runs it: op tests against the scalar
// references, the GGUF reader fuzz test, the stories260K golden decode.
import { fileURLToPath } from 'node:url';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cmake, hasCmake } from '../helpers/cmake.js';

const root = fileURLToPath(new URL('../..', import.meta.url));
if (!hasCmake) console.warn('native-tests skipped: cmake is not installed (apt install cmake)');

describe.skipIf(!hasCmake)('native-tests (C++)', () => {
  it('builds and passes', () => {
    const build = join(root, 'build-native');
    cmake(['-S', root, '-B', build, '-DTHINKCACHE_ADDON=OFF', '-DCMAKE_BUILD_TYPE=Release']);
    cmake(['--build', build, '-j', '2', '--target', 'native-tests']);
    const r = spawnSync(join(build, 'native-tests'), [], { cwd: root, encoding: 'utf8' });
    if (r.status !== 0) console.error(r.stdout, r.stderr);
    expect(r.stdout).toMatch(/(\d+)\/\1 tests passed/);
    expect(r.status).toBe(0);
  }, 900_000);
});
