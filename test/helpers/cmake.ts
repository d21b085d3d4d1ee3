// cmake for the tests that build the C++ core (compiler output can run to megabytes on a fresh build: kept,
// 64 MiB, and shown only on failure).
import { spawnSync } from 'node:child_process';

export const hasCmake = spawnSync('cmake', ['--version']).status === 0;

export function cmake(args: string[]): void {
  const b = spawnSync('cmake', args, { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (b.status !== 0) throw new Error(`cmake ${args.join(' ')} failed (${b.error?.message ?? `status ${b.status}`}):\n${b.stdout}\n${b.stderr}`);
}
