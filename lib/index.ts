/** thinkcache: run local reasoning models (GGUF) from Node.js. Public exports only. */
export { loadModel, Model, type ModelInfo } from './Model.js';
export { Context } from './Context.js';
export { Sequence, type GenerateEvent, type GeneratePrompt, type FinishReason, type Usage, type Timings } from './Sequence.js';
export { renderChatTemplate, type ChatMessage, type ChatTemplateOptions } from './chat/chat-template.js';
export { detectReasoningTags, promptOpensReasoning, type ReasoningTags } from './chat/reasoning-tags.js';
export { ReasoningStreamParser, type ReasoningStreamPart, type ReasoningClosedBy, type ReasoningStreamParserOptions } from './chat/ReasoningStreamParser.js';
export { readGgufInfo, readGgufMetadata, type GgufValue, type GgufInfo, type GgufTensorInfo } from './gguf.js';
export {
  LlmError, GgufFormatError, FileAccessError, UnsupportedModelError, OutOfMemoryError, CudaError, InvalidOptionsError,
  AbortError, BusyError, DisposedError, ContextFullError, BindingError, InternalError, StateFormatError, type ErrorCode,
} from './errors.js';
export type { LoadModelOptions, ContextOptions, GenerateOptions, SamplingOptions, ReasoningOptions } from './options.js';
export { createTokenizer, createTokenizerAsync, type Tokenizer } from './tokenizer/index.js';
export { systemInfo, listQuantTypes, listKvPolicies } from './system.js';
export { EvictionOptionsSchema, EVICTION_POLICIES, type EvictionOptions } from './kv/kv-policies.js';
export { KvOptionsSchema, type KvOptions, type EffectiveKv } from './kv/kv-options.js';
export { parseHeadProfile, loadHeadProfile, formatHeadProfile, selectStreamHeads, type HeadProfile } from './kv/head-profile.js';
export { KV_PRESETS, kvPreset, type KvPreset } from './kv/presets.js';
export { calibrateRotation, saveRotationSidecar, loadRotationSidecar, modelFingerprint, type RotationCalibration } from './kv/rotation.js';
export { calibrateHeadProfile, type CalibrateOptions, type CalibrationResult } from './kv/calibrate.js';
export { runFidelity, type FidelityOptions, type FidelityResult } from './eval/fidelity.js';
export {
  runAccuracy, loadTinyProblems, loadJsonlProblems, mathAnswersEqual, TINY_TASKS,
  type AccuracyOptions, type AccuracyProblem, type AccuracyRow, type AccuracySummary,
} from './eval/accuracy.js';
export {
  fromOpenAIRequest, toOpenAIChunks, toOpenAISSE, toOpenAICompletion, openAIFinishReason,
  type OpenAIChunk, type OpenAICompletion, type OpenAIUsage, type OpenAITimings, type OpenAIOutputOptions,
  type OpenAIRequestOptions, type ParsedOpenAIRequest, type ReasoningField,
} from './adapters/openai.js';
export { toReadableStream, consumeGenerate, type GenerateCallbacks } from './adapters/streams.js';
export { startOpenAIServer, type ServerOptions, type RunningServer } from './server.js';
