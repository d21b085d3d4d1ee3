/**
 * Typed errors. Every native failure carries a stable `code` (the C++ status name, see
 * native/common/status.h); `fromNativeError` maps it to a class and keeps the caller's stack.
 */

export type ErrorCode =
  | 'ERR_GGUF_FORMAT'
  | 'ERR_IO'
  | 'ERR_UNSUPPORTED_ARCH'
  | 'ERR_UNSUPPORTED_QUANT'
  | 'ERR_OOM_HOST'
  | 'ERR_OOM_DEVICE'
  | 'ERR_CUDA'
  | 'ERR_INVALID_ARG'
  | 'ERR_ABORTED'
  | 'ERR_BUSY'
  | 'ERR_DISPOSED'
  | 'ERR_CONTEXT_FULL'
  | 'ERR_INTERNAL'
  | 'ERR_STATE_FORMAT'
  | 'ERR_INVALID_OPTIONS'
  | 'ERR_BINDING';

/** Base class of every error thrown by thinkcache. */
export class LlmError extends Error {
  readonly code: ErrorCode;
  readonly details?: unknown;
  constructor(message: string, code: ErrorCode, details?: unknown) {
    super(message);
    this.name = new.target.name;
    this.code = code;
    this.details = details;
  }
}

/** The file is not a valid GGUF file (bad magic, truncated, out-of-range counts or offsets...). */
export class GgufFormatError extends LlmError {
  constructor(message: string) { super(message, 'ERR_GGUF_FORMAT'); }
}
/** The file could not be opened or read. */
export class FileAccessError extends LlmError {
  constructor(message: string) { super(message, 'ERR_IO'); }
}
/** The model's architecture or a tensor type is not supported; the message lists what is. */
export class UnsupportedModelError extends LlmError {
  constructor(message: string, code: 'ERR_UNSUPPORTED_ARCH' | 'ERR_UNSUPPORTED_QUANT' = 'ERR_UNSUPPORTED_ARCH') { super(message, code); }
}
export class OutOfMemoryError extends LlmError {
  constructor(message: string, code: 'ERR_OOM_HOST' | 'ERR_OOM_DEVICE' = 'ERR_OOM_HOST') { super(message, code); }
}
export class CudaError extends LlmError {
  constructor(message: string) { super(message, 'ERR_CUDA'); }
}
/** An option or argument was invalid. The message names the option, what was expected and what was given. */
export class InvalidOptionsError extends LlmError {
  constructor(message: string, code: 'ERR_INVALID_OPTIONS' | 'ERR_INVALID_ARG' = 'ERR_INVALID_OPTIONS', details?: unknown) { super(message, code, details); }
}
/** The operation was aborted (AbortSignal, `break` out of a stream, or dispose()). */
export class AbortError extends LlmError {
  constructor(message = 'The operation was aborted') { super(message, 'ERR_ABORTED'); }
}
/** Another operation is in flight on the same sequence. */
export class BusyError extends LlmError {
  constructor(message: string) { super(message, 'ERR_BUSY'); }
}
/** The handle was disposed. */
export class DisposedError extends LlmError {
  constructor(message = 'The object has been disposed') { super(message, 'ERR_DISPOSED'); }
}
/** The context is full: the prompt plus generated tokens exceed contextSize. */
export class ContextFullError extends LlmError {
  constructor(message: string) { super(message, 'ERR_CONTEXT_FULL'); }
}
/** The native binding could not be loaded; the message says how to build it. */
export class BindingError extends LlmError {
  constructor(message: string) { super(message, 'ERR_BINDING'); }
}
/**
 * A sequence state file could not be read: not a thinkcache state file, another format version, corrupt or
 * truncated. (A file saved from another model or KV configuration is an `InvalidOptionsError` naming what differs.)
 */
export class StateFormatError extends LlmError {
  constructor(message: string) { super(message, 'ERR_STATE_FORMAT'); }
}
export class InternalError extends LlmError {
  constructor(message: string) { super(message, 'ERR_INTERNAL'); }
}

/** Codes produced by the native core (must equal the addon's listErrorCodes() minus 'OK'). */
export const NATIVE_ERROR_CODES = [
  'ERR_GGUF_FORMAT', 'ERR_IO', 'ERR_UNSUPPORTED_ARCH', 'ERR_UNSUPPORTED_QUANT', 'ERR_OOM_HOST', 'ERR_OOM_DEVICE',
  'ERR_CUDA', 'ERR_INVALID_ARG', 'ERR_ABORTED', 'ERR_BUSY', 'ERR_DISPOSED', 'ERR_CONTEXT_FULL', 'ERR_INTERNAL',
  'ERR_STATE_FORMAT',
] as const;
export type NativeErrorCode = (typeof NATIVE_ERROR_CODES)[number];

function makeError(code: NativeErrorCode, message: string): LlmError {
  switch (code) {
    case 'ERR_GGUF_FORMAT': return new GgufFormatError(message);
    case 'ERR_IO': return new FileAccessError(message);
    case 'ERR_UNSUPPORTED_ARCH': return new UnsupportedModelError(message, 'ERR_UNSUPPORTED_ARCH');
    case 'ERR_UNSUPPORTED_QUANT': return new UnsupportedModelError(message, 'ERR_UNSUPPORTED_QUANT');
    case 'ERR_OOM_HOST': return new OutOfMemoryError(message, 'ERR_OOM_HOST');
    case 'ERR_OOM_DEVICE': return new OutOfMemoryError(message, 'ERR_OOM_DEVICE');
    case 'ERR_CUDA': return new CudaError(message);
    case 'ERR_INVALID_ARG': return new InvalidOptionsError(message, 'ERR_INVALID_ARG');
    case 'ERR_ABORTED': return new AbortError(message);
    case 'ERR_BUSY': return new BusyError(message);
    case 'ERR_DISPOSED': return new DisposedError(message);
    case 'ERR_CONTEXT_FULL': return new ContextFullError(message);
    case 'ERR_INTERNAL': return new InternalError(message);
    case 'ERR_STATE_FORMAT': return new StateFormatError(message);
    default: {
      const never: never = code;
      return new InternalError(`${message} (unknown code ${String(never)})`);
    }
  }
}

/**
 * Converts an error thrown or rejected by the addon into its typed class. `stack` is an Error created
 * before the native call, so the user sees where they called us rather than an empty native stack.
 */
export function fromNativeError(err: unknown, stack?: Error): Error {
  if (err instanceof LlmError) return err;
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && (NATIVE_ERROR_CODES as readonly string[]).includes(code)) {
    const typed = makeError(code as NativeErrorCode, (err as Error).message);
    if (stack?.stack) typed.stack = `${typed.name}: ${typed.message}\n${stack.stack.split('\n').slice(1).join('\n')}`;
    return typed;
  }
  return err instanceof Error ? err : new InternalError(String(err));
}

/** Runs a native call (sync or async) and maps its failure to a typed error with the caller's stack. */
export async function callNative<T>(fn: () => T | Promise<T>): Promise<T> {
  const stack = new Error();
  try {
    return await fn();
  } catch (err) {
    throw fromNativeError(err, stack);
  }
}

export function callNativeSync<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw fromNativeError(err, new Error());
  }
}
