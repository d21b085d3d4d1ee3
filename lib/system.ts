/** Registries and build facts exposed as data (never copied into TS). */
import { getAddon } from './binding.js';
import type { AddonQuantType, AddonSystemInfo } from './addon-types.js';

export function systemInfo(): AddonSystemInfo { return getAddon().systemInfo(); }
export function listQuantTypes(): AddonQuantType[] { return getAddon().listQuantTypes(); }
export function listKvPolicies(): { name: string; source: string }[] { return getAddon().listKvPolicies(); }
