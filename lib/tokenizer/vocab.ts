/*
 * Vocabulary: the tokenizer state read from GGUF metadata (`tokenizer.ggml.*`), following llama.cpp's
 * `llama_vocab::impl::load` (as of the llama.cpp bundled with node-llama-cpp 3.21.1, our oracle): per-model defaults (SPM `llama`: BOS 1, EOS 2, UNK 0, add BOS, space prefix;
 * BPE `gpt2`: BOS = EOS = 11, flags per pre-tokenizer), then explicit metadata ids and flags, then the
 * auto-detection of EOT/EOM/FIM/EOG tokens by their text (which also forces those tokens to CONTROL type).
 * Invariants: `texts[id]` is never empty (llama.cpp renames empty tokens "[EMPTY_<id>]"); `tokenToId` maps a
 * text to its highest id when a text repeats; ids in `special` are either null or < n_vocab.
 */
import { GgufFormatError, UnsupportedModelError } from '../errors.js';
import type { Steps } from '../steps.js';
import { findPreTokenizer, SUPPORTED_PRE_TOKENIZERS, type PreTokenizerSpec } from './pre-tokenizers.js';

/** GGUF `tokenizer.ggml.token_type` values (llama.cpp `llama_token_type`). */
export const TOKEN_TYPE = {
    UNDEFINED: 0,
    NORMAL: 1,
    UNKNOWN: 2,
    CONTROL: 3,
    USER_DEFINED: 4,
    UNUSED: 5,
    BYTE: 6,
} as const;

/** Token attribute bits (llama.cpp `llama_token_attr`); a token's type becomes one of the first six bits. */
export const TOKEN_ATTR = {
    UNDEFINED: 0,
    UNKNOWN: 1 << 0,
    UNUSED: 1 << 1,
    NORMAL: 1 << 2,
    CONTROL: 1 << 3,
    USER_DEFINED: 1 << 4,
    BYTE: 1 << 5,
    LSTRIP: 1 << 7,
    RSTRIP: 1 << 8,
} as const;

export type TokenizerModel = 'llama' | 'gpt2';

/** Special token ids; null where the vocabulary has none (llama.cpp's LLAMA_TOKEN_NULL). */
export interface SpecialTokenIds {
    bos: number | null;
    eos: number | null;
    eot: number | null;
    eom: number | null;
    unk: number | null;
    sep: number | null;
    pad: number | null;
    mask: number | null;
    fimPre: number | null;
    fimSuf: number | null;
    fimMid: number | null;
    fimPad: number | null;
    fimRep: number | null;
    fimSep: number | null;
}

export interface Vocab {
    model: TokenizerModel;
    /** `tokenizer.ggml.pre` as given ('' when absent). */
    pre: string;
    /** Pre-tokenizer of a `gpt2` vocabulary; null for `llama`. */
    preTokenizer: PreTokenizerSpec | null;
    texts: string[];                 // [n_vocab]
    scores: Float32Array;            // [n_vocab]
    attrs: Uint16Array;              // [n_vocab] TOKEN_ATTR bits
    tokenToId: Map<string, number>;
    merges: readonly string[];       // gpt2 only, rank = index
    special: SpecialTokenIds;
    eog: Set<number>;
    /** Control, user-defined and unknown tokens, longest text first: the order they are split out of text. */
    specialCache: number[];
    addBos: boolean;
    addEos: boolean;
    addSpacePrefix: boolean;
    cleanSpaces: boolean;
    ignoreMerges: boolean;
}

const KEY = 'tokenizer.ggml.';

function toNumber(value: unknown, key: string): number {
    if (typeof value === 'number' && Number.isFinite(value)) return value;
    if (typeof value === 'bigint') return Number(value);
    throw new GgufFormatError(`createTokenizer: ${key} must be a number but is ${describe(value)}`);
}

function describe(value: unknown): string {
    if (value === undefined) return 'missing';
    if (Array.isArray(value)) return `an array of ${value.length}`;
    if (ArrayBuffer.isView(value)) return `a ${value.constructor.name}`;
    return `${typeof value} ${JSON.stringify(value)?.slice(0, 60)}`;
}

function readArray(metadata: Record<string, unknown>, key: string): ArrayLike<unknown> | undefined {
    const value = metadata[key];
    if (value === undefined) return undefined;
    if (Array.isArray(value) || (ArrayBuffer.isView(value) && !(value instanceof DataView))) {
        return value as unknown as ArrayLike<unknown>;
    }
    throw new GgufFormatError(`createTokenizer: ${key} must be an array but is ${describe(value)}`);
}

function readBool(metadata: Record<string, unknown>, key: string): boolean | undefined {
    const value = metadata[key];
    if (value === undefined) return undefined;
    if (typeof value === 'boolean') return value;
    if (typeof value === 'number') return value !== 0;
    throw new GgufFormatError(`createTokenizer: ${key} must be a boolean but is ${describe(value)}`);
}

function typeToAttr(type: number): number {
    switch (type) {
        case TOKEN_TYPE.UNKNOWN: return TOKEN_ATTR.UNKNOWN;
        case TOKEN_TYPE.UNUSED: return TOKEN_ATTR.UNUSED;
        case TOKEN_TYPE.NORMAL: return TOKEN_ATTR.NORMAL;
        case TOKEN_TYPE.CONTROL: return TOKEN_ATTR.CONTROL;
        case TOKEN_TYPE.USER_DEFINED: return TOKEN_ATTR.USER_DEFINED;
        case TOKEN_TYPE.BYTE: return TOKEN_ATTR.BYTE;
        default: return TOKEN_ATTR.UNDEFINED;
    }
}

/** Maps attribute bits to the GGUF token type they behave as (CONTROL wins over bits it was added to). */
export function attrToType(attr: number): number {
    if (attr & TOKEN_ATTR.CONTROL) return TOKEN_TYPE.CONTROL;
    if (attr & TOKEN_ATTR.UNKNOWN) return TOKEN_TYPE.UNKNOWN;
    if (attr & TOKEN_ATTR.USER_DEFINED) return TOKEN_TYPE.USER_DEFINED;
    if (attr & TOKEN_ATTR.BYTE) return TOKEN_TYPE.BYTE;
    if (attr & TOKEN_ATTR.NORMAL) return TOKEN_TYPE.NORMAL;
    if (attr & TOKEN_ATTR.UNUSED) return TOKEN_TYPE.UNUSED;
    return TOKEN_TYPE.UNDEFINED;
}

// Texts that llama.cpp recognizes as special tokens, in the priority we use when several are present
// (llama.cpp takes whichever its hash map yields first; listing order picks <|eot_id|>/<|im_end|> as EOT,
// which is what llama.cpp reports for Llama 3 and Qwen).
const EOT_TEXTS = ['<|eot_id|>', '<|im_end|>', '<|end|>', '<end_of_turn>', '<|endoftext|>', '<|end_of_text|>',
    '<EOT>', '_<EOT>', '[EOT]', '<｜end▁of▁sentence｜>', '<end_of_utterance>'];
const EOM_TEXTS = ['<|eom_id|>'];
const FIM_PRE_TEXTS = ['<|fim_prefix|>', '<fim-prefix>', '<fim_prefix>', '<｜fim▁begin｜>', '<PRE>', '▁<PRE>',
    '<|code_prefix|>', '<|prefix|>'];
const FIM_SUF_TEXTS = ['<|fim_suffix|>', '<fim-suffix>', '<fim_suffix>', '<｜fim▁hole｜>', '<SUF>', '▁<SUF>',
    '<|code_suffix|>', '<|suffix|>'];
const FIM_MID_TEXTS = ['<|fim_middle|>', '<fim-middle>', '<fim_middle>', '<｜fim▁end｜>', '<MID>', '▁<MID>',
    '<|code_middle|>', '<|middle|>'];
const FIM_PAD_TEXTS = ['<|fim_pad|>', '<fim-pad>', '<fim_pad>', '<PAD>', '[PAD]'];
const FIM_REP_TEXTS = ['<|fim_repo|>', '<|repo_name|>', '<fim-repo>', '<REPO>', '<reponame>'];
const FIM_SEP_TEXTS = ['<|file_sep|>'];
// note: '</s>' (added for PaddleOCR) makes '</s>' a control, end-of-generation token in every vocabulary that has
// it, e.g. Qwen's plain-text token 128247 and Phi-3's user-defined token 2; llama.cpp does this, so we do too.
const EOG_TEXTS = ['<|eot_id|>', '<|im_end|>', '<|end|>', '<|return|>', '<|call|>', '<|flush|>', '<|calls|>',
    '<end_of_turn>', '<|endoftext|>', '</s>', '<|eom_id|>', '<EOT>', '_<EOT>', '[EOT]', '[EOS]', '<|end_of_text|>',
    '<end_of_utterance>', '<eos>', '<turn|>', '<|tool_response>', '<｜end▁of▁sentence｜>', '[e~['];
// gpt-oss: llama.cpp always renders these, so they are user-defined rather than control.
const ALWAYS_RENDERED_TEXTS = ['<|channel|>', '<|message|>', '<|start|>', '<|constrain|>'];

const SPECIAL_ID_KEYS: ReadonlyArray<[keyof SpecialTokenIds, string]> = [
    ['bos', 'bos_token_id'], ['eos', 'eos_token_id'], ['eot', 'eot_token_id'], ['eom', 'eom_token_id'],
    ['unk', 'unknown_token_id'], ['sep', 'seperator_token_id'], ['pad', 'padding_token_id'],
    ['mask', 'mask_token_id'], ['fimPre', 'fim_pre_token_id'], ['fimSuf', 'fim_suf_token_id'],
    ['fimMid', 'fim_mid_token_id'], ['fimPad', 'fim_pad_token_id'], ['fimRep', 'fim_rep_token_id'],
    ['fimSep', 'fim_sep_token_id'],
    // deprecated key names, still read by llama.cpp
    ['fimPre', 'prefix_token_id'], ['fimSuf', 'suffix_token_id'], ['fimMid', 'middle_token_id'],
];

// Iterations between two yields (a 150k vocabulary takes ~80 ms in all on the CI machine).
const STEP = 4096;

/** Reads the tokenizer part of a flat GGUF metadata object, in steps (lib/steps.ts): yields every few thousand tokens or merges. */
export function* loadVocabSteps(metadata: Record<string, unknown>): Steps<Vocab> {
    const modelValue = metadata[`${KEY}model`];
    if (typeof modelValue !== 'string') {
        throw new GgufFormatError(`createTokenizer: ${KEY}model must be a string but is ${describe(modelValue)}`);
    }
    if (modelValue !== 'llama' && modelValue !== 'gpt2') {
        throw new UnsupportedModelError(`createTokenizer: tokenizer model '${modelValue}' (${KEY}model) is not ` +
            `supported; supported: 'llama' (SentencePiece), 'gpt2' (byte-level BPE)`);
    }
    const model: TokenizerModel = modelValue;
    const preValue = metadata[`${KEY}pre`];
    const pre = typeof preValue === 'string' ? preValue : '';

    const special: SpecialTokenIds = {
        bos: null, eos: null, eot: null, eom: null, unk: null, sep: null, pad: null, mask: null,
        fimPre: null, fimSuf: null, fimMid: null, fimPad: null, fimRep: null, fimSep: null,
    };
    let addBos: boolean;
    let addEos = false;
    let addSpacePrefix: boolean;
    let cleanSpaces: boolean;
    let ignoreMerges = false;
    let preTokenizer: PreTokenizerSpec | null = null;
    let merges: readonly string[] = [];

    if (model === 'llama') {
        special.bos = 1;
        special.eos = 2;
        special.unk = 0;
        addBos = true;
        addSpacePrefix = true;
        cleanSpaces = false;
    } else {
        const mergeList = readArray(metadata, `${KEY}merges`);
        if (mergeList === undefined) {
            throw new GgufFormatError(`createTokenizer: ${KEY}merges is missing; a 'gpt2' tokenizer needs it`);
        }
        const list = new Array<string>(mergeList.length);
        for (let i = 0; i < mergeList.length; i++) {
            const m = mergeList[i];
            if (typeof m !== 'string') {
                throw new GgufFormatError(`createTokenizer: ${KEY}merges[${i}] must be a string but is ${describe(m)}`);
            }
            list[i] = m;
            if (i % STEP === STEP - 1) yield;
        }
        merges = list;
        special.bos = 11;
        special.eos = 11;
        preTokenizer = findPreTokenizer(pre === '' ? 'default' : pre) ?? null;
        if (preTokenizer === null) {
            throw new UnsupportedModelError(`createTokenizer: pre-tokenizer '${pre}' (${KEY}pre) is not supported; ` +
                `supported: ${SUPPORTED_PRE_TOKENIZERS.join(', ')}`);
        }
        addBos = preTokenizer.addBos ?? false;
        addSpacePrefix = false;
        cleanSpaces = preTokenizer.cleanSpaces;
        ignoreMerges = preTokenizer.ignoreMerges;
        if (preTokenizer.noBos) special.bos = null;
    }
    addSpacePrefix = readBool(metadata, `${KEY}add_space_prefix`) ?? addSpacePrefix;

    // tokens, scores, types
    const tokenList = readArray(metadata, `${KEY}tokens`);
    if (tokenList === undefined) throw new GgufFormatError(`createTokenizer: ${KEY}tokens is missing`);
    const nVocab = tokenList.length;
    const scoreList = readArray(metadata, `${KEY}scores`);
    const typeList = readArray(metadata, `${KEY}token_type`);
    if (scoreList !== undefined && scoreList.length !== nVocab) {
        throw new GgufFormatError(`createTokenizer: ${KEY}scores has ${scoreList.length} entries but ` +
            `${KEY}tokens has ${nVocab}`);
    }
    if (typeList !== undefined && typeList.length !== nVocab) {
        throw new GgufFormatError(`createTokenizer: ${KEY}token_type has ${typeList.length} entries but ` +
            `${KEY}tokens has ${nVocab}`);
    }
    const texts = new Array<string>(nVocab);
    const scores = new Float32Array(nVocab);
    const attrs = new Uint16Array(nVocab);
    const tokenToId = new Map<string, number>();
    for (let id = 0; id < nVocab; id++) {
        const value = tokenList[id];
        if (typeof value !== 'string') {
            throw new GgufFormatError(`createTokenizer: ${KEY}tokens[${id}] must be a string but is ${describe(value)}`);
        }
        const text = value === '' ? `[EMPTY_${id}]` : value;
        texts[id] = text;
        tokenToId.set(text, id);
        if (scoreList !== undefined) scores[id] = Number(scoreList[id]);
        attrs[id] = typeList !== undefined ? typeToAttr(Number(typeList[id])) : TOKEN_ATTR.NORMAL;
        if (id % STEP === STEP - 1) yield;
    }

    // defaults outside the vocabulary are disabled; explicit out-of-range ids keep the default, as llama.cpp does
    for (const [field] of SPECIAL_ID_KEYS) {
        const id = special[field];
        if (id !== null && id >= nVocab) special[field] = null;
    }
    for (const [field, key] of SPECIAL_ID_KEYS) {
        const value = metadata[`${KEY}${key}`];
        if (value === undefined) continue;
        const id = toNumber(value, `${KEY}${key}`);
        if (Number.isInteger(id) && id >= 0 && id < nVocab) special[field] = id;
    }
    addBos = readBool(metadata, `${KEY}add_bos_token`) ?? addBos;
    addEos = readBool(metadata, `${KEY}add_eos_token`) ?? addEos;

    // auto-detect special tokens by text; a detected token that is not CONTROL gets the CONTROL bit
    const forceControl = (id: number): void => {
        attrs[id]! |= TOKEN_ATTR.CONTROL;
    };
    const detect = (field: keyof SpecialTokenIds, candidates: readonly string[]): void => {
        if (special[field] !== null) return;
        for (const text of candidates) {
            const id = tokenToId.get(text);
            if (id === undefined) continue;
            special[field] = id;
            forceControl(id);
            return;
        }
    };
    detect('eot', EOT_TEXTS);
    detect('eom', EOM_TEXTS);
    detect('fimPre', FIM_PRE_TEXTS);
    detect('fimSuf', FIM_SUF_TEXTS);
    detect('fimMid', FIM_MID_TEXTS);
    detect('fimPad', FIM_PAD_TEXTS);
    detect('fimRep', FIM_REP_TEXTS);
    detect('fimSep', FIM_SEP_TEXTS);
    // control tokens named "...unused..." are unused
    for (let id = 0; id < nVocab; id++) {
        if ((attrs[id]! & TOKEN_ATTR.CONTROL) && texts[id]!.includes('unused')) attrs[id]! |= TOKEN_ATTR.UNUSED;
    }

    const eog = new Set<number>();
    for (const field of ['fimPad', 'fimRep', 'fimSep'] as const) {
        if (special[field] !== null) eog.add(special[field]);
    }
    for (const text of EOG_TEXTS) {
        const id = tokenToId.get(text);
        if (id === undefined) continue;
        eog.add(id);
        forceControl(id);
    }
    for (const text of ALWAYS_RENDERED_TEXTS) {
        const id = tokenToId.get(text);
        if (id !== undefined) attrs[id] = TOKEN_ATTR.USER_DEFINED;
    }
    for (const field of ['eos', 'eot', 'eom'] as const) {
        if (special[field] !== null) eog.add(special[field]);
    }
    // o200k_harmony / solar-open: with <|return|> + <|call|> (or <|calls|> + <|flush|>) in the EOG set, <|end|>
    // ends a message, not the generation
    const eogHas = (text: string): boolean => {
        const id = tokenToId.get(text);
        return id !== undefined && eog.has(id);
    };
    const endId = tokenToId.get('<|end|>');
    const hasCall = eogHas('<|call|>') || eogHas('<|calls|>');
    if (endId !== undefined && eog.has(endId) && hasCall && (eogHas('<|return|>') || eogHas('<|flush|>'))) {
        eog.delete(endId);
        attrs[endId] = TOKEN_ATTR.USER_DEFINED;
    }
    // Gemma 4: '</s>' is text there, not an end of generation
    const eosTextId = tokenToId.get('</s>');
    if (eosTextId !== undefined && eog.has(eosTextId) && eogHas('<|tool_response>')) {
        eog.delete(eosTextId);
        attrs[eosTextId] = TOKEN_ATTR.NORMAL;
    }

    const specialCache: number[] = [];
    for (let id = 0; id < nVocab; id++) {
        if (attrs[id]! & (TOKEN_ATTR.CONTROL | TOKEN_ATTR.USER_DEFINED | TOKEN_ATTR.UNKNOWN)) specialCache.push(id);
    }
    // llama.cpp's std::sort leaves equal lengths in unspecified order; we keep ids ascending for determinism
    specialCache.sort((a, b) => texts[b]!.length - texts[a]!.length || a - b);

    // per-model attributes: Phi-3 strips whitespace after its special tokens (except <unk>, <s>, <|endoftext|>)
    const name = typeof metadata['general.name'] === 'string' ? (metadata['general.name'] as string).toLowerCase() : '';
    if (name.includes('phi-3') || name.includes('phi3')) {
        for (const id of specialCache) attrs[id]! |= TOKEN_ATTR.RSTRIP;
        const eosText = tokenToId.get('</s>');
        if (eosText !== undefined) attrs[eosText]! |= TOKEN_ATTR.RSTRIP;
        for (const text of ['<unk>', '<s>', '<|endoftext|>']) {
            const id = tokenToId.get(text);
            if (id !== undefined) attrs[id]! &= ~TOKEN_ATTR.RSTRIP;
        }
    }

    return {
        model, pre, preTokenizer, texts, scores, attrs, tokenToId, merges, special, eog, specialCache,
        addBos, addEos, addSpacePrefix, cleanSpaces, ignoreMerges,
    };
}
