/*
 * Public tokenizer API: `createTokenizer(metadata)` over GGUF tokenizer metadata (SentencePiece `llama` and
 * byte-level BPE `gpt2` with llama.cpp's pre-tokenizers), plus the streaming detokenizer.
 */
export { createTokenizer, createTokenizerAsync, Tokenizer } from './Tokenizer.js';
export type { DecodeOptions, EncodeOptions, PieceOptions, StreamDecoderOptions } from './Tokenizer.js';
export { TokenStreamDecoder } from './TokenStreamDecoder.js';
export { TOKEN_TYPE } from './vocab.js';
export type { SpecialTokenIds, TokenizerModel } from './vocab.js';
export { SUPPORTED_PRE_TOKENIZERS } from './pre-tokenizers.js';
export { metadataFromHfTokenizerJson } from './hf-tokenizer-json.js';
