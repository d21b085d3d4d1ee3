// The CUDA backend's tests without a GPU (issue 8): the .cu sources built for the CPU emulation
// (native/cuda/emu, scripts/cuda-emu.py; THINKCACHE_CUDA_EMU) and every CUDA test run — op by op against the
// CPU references, the forward pass, the engine on a device context, the compressed device cache against the
// CPU engine — and then the Node API on it: the addon built with the emulation (cmake-js) runs the backend
// tests (test/lib/backend.test.ts), whose CUDA cases (generate on 'cuda' == 'cpu', the compressed device cache's
// positions and counts, backend 'cpu' contexts of a CUDA model) otherwise skip without a GPU.
// Needs cmake, python3 and an x86-64 or ucontext host; skips with the reason otherwise.
// The C++ tests run in two processes at once (the emulation runs a kernel on one core): the device-cache engine
// tests (one codec family per cache, and mixed), the longest, beside all the others.
// About 10 minutes on the 2-core CI machine (builds 1-2, the C++ CUDA tests 6-7 in two processes, the backend tests 2.5).
import { fileURLToPath } from 'node:url';
import { spawn, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cmake, hasCmake } from '../helpers/cmake.js';

const root = fileURLToPath(new URL('../..', import.meta.url));
const hasPython = spawnSync('python3', ['--version']).status === 0;
const why = !hasCmake ? 'cmake is not installed' : !hasPython ? 'python3 is not installed (scripts/cuda-emu.py)' : '';
if (why) console.warn(`CUDA emulation tests skipped: ${why}`);

describe.skipIf(Boolean(why))('CUDA backend on the CPU emulation', () => {
  it('builds, and every CUDA test runs and passes (none may skip)', async () => {
    const build = join(root, 'build-cuda-emu');
    cmake(['-S', root, '-B', build, '-DTHINKCACHE_CUDA_EMU=ON', '-DTHINKCACHE_ADDON=OFF', '-DCMAKE_BUILD_TYPE=Release']);
    cmake(['--build', build, '-j', '2', '--target', 'native-tests']);
    const run = (args: string[]) => new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
      const p = spawn(join(build, 'native-tests'), args, { cwd: root });
      let stdout = '', stderr = '';
      p.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
      p.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
      p.on('close', (status) => resolve({ status, stdout, stderr }));
    });
    const parts = await Promise.all([run(['-o', 'cuda/ring-engine']), run(['-o', 'cuda/', '-x', 'cuda/ring-engine'])]);
    let n = 0;
    for (const r of parts) {
      if (r.status !== 0) console.error(r.stdout, r.stderr);
      expect(r.status).toBe(0);
      const m = r.stdout.match(/(\d+)\/\1 tests passed/);
      expect(m).not.toBeNull();
      const k = Number(m![1]);
      const ok = (r.stdout.match(/^cuda\/.*\bOK \(/gm) ?? []).length;
      expect(ok).toBe(k);  // every one ran: the emulated device answers
      expect(r.stdout).not.toMatch(/skipped:/);
      n += k;
    }
    expect(n).toBeGreaterThanOrEqual(21);
    expect(parts[0]!.stdout).toMatch(/^cuda\/ring-engine.*OK \(/m);
  }, 1_200_000);

  it('the Node API on the emulated device: the backend tests run their CUDA cases and pass', () => {
    const out = join(root, 'build-cuda-emu-addon');
    const b = spawnSync('npx', ['cmake-js', 'compile', '--CDTHINKCACHE_CUDA_EMU=ON', '-O', out], { cwd: root, encoding: 'utf8', maxBuffer: 64 << 20 });
    if (b.status !== 0) throw new Error(`cmake-js compile (emulation) failed:\n${b.stdout}\n${b.stderr}`);
    const binding = join(out, 'Release', 'thinkcache.node');
    const t = spawnSync('npx', ['vitest', 'run', 'test/lib/backend.test.ts'], {
      cwd: root, encoding: 'utf8', maxBuffer: 64 << 20, env: { ...process.env, THINKCACHE_BINDING: binding },
    });
    if (t.status !== 0) console.error(t.stdout, t.stderr);
    expect(t.status).toBe(0);
    const plain = `${t.stdout}${t.stderr}`.replace(/\x1b\[[0-9;]*m/g, '');
    expect(plain).not.toMatch(/CUDA generate test skipped/);  // the device cases ran
    expect(plain).toMatch(/Tests\s+(\d+) passed \(\1\)/);  // none skipped
    expect(plain).not.toMatch(/skipped/i);
  }, 600_000);
});
