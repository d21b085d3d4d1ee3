/*
 * Converts a Hugging Face `tokenizer.json` (byte-level BPE) into the flat GGUF tokenizer metadata that
 * createTokenizer() and the GGUF fixture writer consume, the way llama.cpp's convert_hf_to_gguf.py does for
 * `gpt2`-style vocabularies: tokens ordered by id (model vocab plus added tokens; holes become "[PAD<id>]",
 * type UNUSED), added tokens typed CONTROL when marked special or control-looking (`<|...|>`, `<｜...｜>`),
 * else USER_DEFINED; merges written "left right".
 * Invariant: the output holds only `tokenizer.ggml.*` keys.
 */
import { GgufFormatError, UnsupportedModelError } from '../errors.js';
import { TOKEN_TYPE } from './vocab.js';

interface HfAddedToken {
    id: number;
    content: string;
    special?: boolean;
}

export interface HfTokenizerJsonOptions {
    /** `tokenizer.ggml.pre`, e.g. 'qwen2' or 'llama-bpe' (llama.cpp picks it by hashing the tokenizer's output). */
    pre: string;
    /** tokenizer_config.json: `bos_token`, `eos_token`, `add_bos_token`, `add_eos_token` are used when present. */
    tokenizerConfig?: Record<string, unknown>;
    /** Pad the vocabulary to this size (the model's `vocab_size`), as convert_hf_to_gguf.py does. */
    vocabSize?: number;
}

function looksSpecial(text: string): boolean {
    return ['<pad>', '<mask>', '<2mass>', '[@BOS@]'].includes(text) ||
        (text.startsWith('<|') && text.endsWith('|>')) ||
        (text.startsWith('<｜') && text.endsWith('｜>')) ||
        (text.startsWith('<unused') && text.endsWith('>'));
}

function tokenContent(value: unknown): string | undefined {
    if (typeof value === 'string') return value;
    if (value !== null && typeof value === 'object' && typeof (value as { content?: unknown }).content === 'string') {
        return (value as { content: string }).content;
    }
    return undefined;
}

/**
 * @example
 * const json = JSON.parse(gunzipSync(readFileSync('qwen3/tokenizer.json.gz')).toString('utf8'));
 * const tokenizer = createTokenizer(metadataFromHfTokenizerJson(json, { pre: 'qwen2' }));
 */
export function metadataFromHfTokenizerJson(json: unknown, options: HfTokenizerJsonOptions): Record<string, unknown> {
    const root = json as { model?: { type?: string; vocab?: Record<string, number>; merges?: unknown[] }; added_tokens?: HfAddedToken[] };
    const model = root?.model;
    if (model?.type !== 'BPE' || model.vocab === undefined || !Array.isArray(model.merges)) {
        throw new UnsupportedModelError(`metadataFromHfTokenizerJson: model.type is '${model?.type}'; only byte-level 'BPE' ` +
            'tokenizer.json files with model.vocab and model.merges are supported');
    }
    const added = root.added_tokens ?? [];
    let size = options.vocabSize ?? 0;
    for (const id of Object.values(model.vocab)) size = Math.max(size, id + 1);
    for (const token of added) size = Math.max(size, token.id + 1);

    const tokens = new Array<string | undefined>(size);
    const types = new Int32Array(size);
    for (const [text, id] of Object.entries(model.vocab)) {
        tokens[id] = text;
        types[id] = TOKEN_TYPE.NORMAL;
    }
    for (const token of added) {
        tokens[token.id] = token.content;
        types[token.id] = token.special || looksSpecial(token.content) ? TOKEN_TYPE.CONTROL : TOKEN_TYPE.USER_DEFINED;
    }
    for (let id = 0; id < size; id++) {
        if (tokens[id] === undefined) {
            tokens[id] = `[PAD${id}]`;
            types[id] = TOKEN_TYPE.UNUSED;
        }
    }

    const merges = model.merges.map((merge, i) => {
        if (typeof merge === 'string') return merge;
        if (Array.isArray(merge) && merge.length === 2) return `${merge[0]} ${merge[1]}`;
        throw new GgufFormatError(`metadataFromHfTokenizerJson: model.merges[${i}] must be "a b" or ["a", "b"]`);
    });

    const metadata: Record<string, unknown> = {
        'tokenizer.ggml.model': 'gpt2',
        'tokenizer.ggml.pre': options.pre,
        'tokenizer.ggml.tokens': tokens as string[],
        'tokenizer.ggml.token_type': types,
        'tokenizer.ggml.merges': merges,
    };
    const config = options.tokenizerConfig ?? {};
    const idOf = (text: string | undefined): number | undefined => {
        if (text === undefined) return undefined;
        const id = (tokens as string[]).indexOf(text);
        return id >= 0 ? id : undefined;
    };
    const bos = idOf(tokenContent(config['bos_token']));
    const eos = idOf(tokenContent(config['eos_token']));
    if (bos !== undefined) metadata['tokenizer.ggml.bos_token_id'] = bos;
    if (eos !== undefined) metadata['tokenizer.ggml.eos_token_id'] = eos;
    if (typeof config['add_bos_token'] === 'boolean') metadata['tokenizer.ggml.add_bos_token'] = config['add_bos_token'];
    if (typeof config['add_eos_token'] === 'boolean') metadata['tokenizer.ggml.add_eos_token'] = config['add_eos_token'];
    return metadata;
}
