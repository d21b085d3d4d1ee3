/**
 * Backend selection for loadModel (issue 8). Never falls back silently: `backend: 'cuda'` either runs on
 * the GPU or throws a typed error saying exactly why not (build without THINKCACHE_CUDA, no device,
 * driver error, or the CUDA forward pass not landed yet); 'auto' picks CUDA only when it can run the
 * model, otherwise CPU, and `model.backend` reports the choice.
 */
import type { Addon, AddonCudaInfo } from './addon-types.js';
import { CudaError, UnsupportedModelError } from './errors.js';

export type BackendName = 'cpu' | 'cuda';

/** The addon's CUDA probe; addons built before `cudaInfo()` existed report only the build flag. */
export function cudaInfo(addon: Pick<Addon, 'systemInfo'> & { cudaInfo?: () => AddonCudaInfo }): AddonCudaInfo {
  if (typeof addon.cudaInfo === 'function') return addon.cudaInfo();
  const built = addon.systemInfo().cuda;
  return { built, deviceCount: 0, forward: false, reason: built ? 'this addon cannot probe CUDA devices (rebuild it)' : 'built without THINKCACHE_CUDA' };
}

export function resolveBackend(requested: 'cpu' | 'auto' | 'cuda', info: AddonCudaInfo): BackendName {
  if (requested === 'cpu') return 'cpu';
  const usable = info.built && info.deviceCount > 0 && info.forward;
  if (requested === 'auto') return usable && !info.emulated ? 'cuda' : 'cpu';
  if (!info.built) {
    throw new UnsupportedModelError('loadModel: backend "cuda" is not available: this build has no CUDA backend (built without THINKCACHE_CUDA); '
      + 'rebuild with -DTHINKCACHE_CUDA=ON or use backend "cpu" or "auto"');
  }
  if (info.deviceCount === 0) {
    throw new CudaError(`loadModel: backend "cuda" is not available: ${info.reason || 'no CUDA device'}; use backend "cpu" or "auto"`);
  }
  if (!info.forward) {
    throw new UnsupportedModelError('loadModel: backend "cuda" is not available: this build has the CUDA ops but not the CUDA forward pass yet '
      + '(issue 8); use backend "cpu" or "auto"');
  }
  return 'cuda';
}
