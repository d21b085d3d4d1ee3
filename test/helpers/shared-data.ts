// Locates ../shared/data (present in CI, absent in a user's clone). Tests that need it skip with a
// printed reason when it is missing.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
export const sharedData = join(repoRoot, '..', 'shared', 'data');
export const stories260K = join(sharedData, 'models', 'stories260K.gguf');

/** true when the file exists; otherwise prints why the dependent tests skip. */
export function haveSharedFile(path: string, what: string): boolean {
  if (existsSync(path)) return true;
  console.warn(`skipping ${what}: ${path} not found (../shared/data is only present in CI and the dev workspace)`);
  return false;
}
