/*
 * BPE pre-tokenizers: the regex lists llama.cpp applies before byte-level BPE, selected by `tokenizer.ggml.pre`
 * (llama.cpp `llm_tokenizer_bpe`, `unicode_regex_split`; llama.cpp hand-codes the gpt2/llama3/qwen2 regexes in
 * C++, with the same matches as the regexes themselves). Each regex of a list splits every chunk produced by
 * the previous one; the text between matches stays a chunk of its own ("Isolated" splitting).
 * Whitespace follows llama.cpp, not JS: non-ASCII whitespace (U+0085, U+00A0, U+1680, U+2000-U+200A,
 * U+2028, U+2029, U+202F, U+205F, U+3000) is rewritten to \v before matching, exactly as llama.cpp does, so `\s`
 * below is the ASCII class [\t-\r ] and JS's extra U+FEFF is not whitespace. \p{L}, \p{N}, \p{P} are the
 * engine's Unicode categories (llama.cpp uses its own generated tables; they differ only on unassigned or very
 * recent code points).
 */

export interface PreTokenizerSpec {
    /** llama.cpp's pre-tokenizer type this name maps to. */
    kind: string;
    regexes: readonly RegExp[];
    /** Remove " ?", " !", " .", " ," etc. when decoding (llama.cpp `clean_spaces`). */
    cleanSpaces: boolean;
    /** A pre-token that is itself a vocabulary token is emitted whole (llama.cpp `ignore_merges`). */
    ignoreMerges: boolean;
    /** Overrides the BPE default of not adding BOS. */
    addBos?: boolean;
    /** The vocabulary has no BOS token. */
    noBos?: boolean;
}

const WS = '\\t-\\r ';  // body of a character class: llama.cpp's \s after the \v rewrite

/** Builds a JS regex from llama.cpp's ECMAScript pattern, with \s and \S pinned to llama.cpp's whitespace. */
function re(pattern: string): RegExp {
    let out = '';
    let inClass = false;
    for (let i = 0; i < pattern.length; i++) {
        const c = pattern[i]!;
        if (c === '\\' && i + 1 < pattern.length) {
            const n = pattern[i + 1]!;
            if (n === 's') out += inClass ? WS : `[${WS}]`;
            else if (n === 'S') {
                if (inClass) throw new Error(`pre-tokenizer regex: \\S inside a class is not supported: ${pattern}`);
                out += `[^${WS}]`;
            } else out += c + n;
            i++;
            continue;
        }
        if (c === '[') inClass = true;
        else if (c === ']') inClass = false;
        out += c;
    }
    return new RegExp(out, 'gu');
}

const GPT2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)";
const LLAMA3 = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}|" +
    " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2 = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}|" +
    " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
// cased letters of the deepseek-llm pre-tokenizer, as code points (the source glyphs are NFC-unstable)
const DEEPSEEK_LLM_LETTERS =
    '\\u{41}-\\u{5A}\\u{61}-\\u{7A}\\u{B5}\\u{C0}-\\u{D6}\\u{D8}-\\u{F6}\\u{F8}-\\u{1BA}\\u{1BC}-\\u{1BF}' +
    '\\u{1C4}-\\u{293}\\u{295}-\\u{2AF}\\u{370}-\\u{373}\\u{376}-\\u{377}\\u{37B}-\\u{37D}\\u{37F}' +
    '\\u{386}\\u{388}-\\u{38A}\\u{38C}\\u{38E}-\\u{3A1}\\u{3A3}-\\u{3F5}\\u{3F7}-\\u{481}' +
    '\\u{48A}-\\u{52F}\\u{531}-\\u{556}\\u{10A0}-\\u{10C5}\\u{13A0}-\\u{13F5}\\u{13F8}-\\u{13FD}' +
    '\\u{1C90}-\\u{1CBA}\\u{1CBD}-\\u{1CBF}\\u{1D00}-\\u{1D2B}\\u{1D6B}-\\u{1D77}\\u{1D79}-\\u{1D9A}' +
    '\\u{1E00}-\\u{1F15}\\u{1F18}-\\u{1F1D}\\u{1F20}-\\u{1F45}\\u{1F48}-\\u{1F4D}\\u{1F50}-\\u{1F57}' +
    '\\u{1F59}\\u{1F5B}\\u{1F5D}\\u{1F5F}-\\u{1F7D}\\u{1F80}-\\u{1FB4}\\u{1FB6}-\\u{1FBC}\\u{1FBE}' +
    '\\u{1FC2}-\\u{1FC4}\\u{1FC6}-\\u{1FCC}\\u{1FD0}-\\u{1FD3}\\u{1FD6}-\\u{1FDB}\\u{1FE0}-\\u{1FEC}' +
    '\\u{1FF2}-\\u{1FF4}\\u{1FF6}-\\u{1FFC}\\u{2102}\\u{2107}\\u{210A}-\\u{2113}\\u{2115}' +
    '\\u{2119}-\\u{211D}\\u{2124}\\u{2126}\\u{2128}\\u{212A}-\\u{212D}\\u{212F}-\\u{2134}\\u{2139}' +
    '\\u{213C}-\\u{213F}\\u{2145}-\\u{2149}\\u{214E}\\u{2183}-\\u{2184}\\u{2C00}-\\u{2C7B}' +
    '\\u{2C7E}-\\u{2CE4}\\u{2CEB}-\\u{2CEE}\\u{2CF2}-\\u{2CF3}\\u{A640}-\\u{A66D}\\u{A680}-\\u{A69B}' +
    '\\u{A722}-\\u{A76F}\\u{A771}-\\u{A787}\\u{A78B}-\\u{A78E}\\u{AB70}-\\u{ABBF}\\u{FB00}-\\u{FB06}' +
    '\\u{FB13}-\\u{FB17}\\u{FF21}-\\u{FF3A}\\u{FF41}-\\u{FF5A}\\u{10400}-\\u{1044F}\\u{104B0}-\\u{104D3}' +
    '\\u{104D8}-\\u{104FB}\\u{10C80}-\\u{10CB2}\\u{10CC0}-\\u{10CF2}\\u{118A0}-\\u{118DF}' +
    '\\u{1E900}-\\u{1E943}';
const CJK = '[\\u{4E00}-\\u{9FA5}\\u{0800}-\\u{4E00}\\u{AC00}-\\u{D7FF}]+';  // [一-龥ࠀ-一가-퟿]+

const SPEC_GPT2 = { regexes: [re(GPT2)] };
const SPEC_LLAMA3 = { regexes: [re(LLAMA3)] };
const SPEC_QWEN2 = { regexes: [re(QWEN2)] };
const SPEC_DEFAULT = {
    regexes: [re('[\\p{P}\\$\\+<=>\\^~\\|]+'), re(GPT2), re('\\p{N}+'), re('[0-9][0-9][0-9]')],
};
const SPEC_DEEPSEEK_LLM = {
    regexes: [re('[\\r\\n]'), re(`\\s?[${DEEPSEEK_LLM_LETTERS}]+`), re('\\s?[!-/:-~\\u{FF01}-\\u{FF0F}\\u{FF1A}-\\u{FF5E}\\u{2018}-\\u{201F}\\u{3000}-\\u{3002}]+'),
        re('\\s+$'), re(CJK), re('\\p{N}+')],
};
const SPEC_DEEPSEEK_CODER = {
    regexes: [re('[\\r\\n]'), re('\\s?\\p{L}+'), re('\\s?\\p{P}+'), re(CJK), re('\\p{N}')],
};
const SPEC_FALCON = {
    regexes: [re('[\\p{P}\\$\\+<=>\\^~\\|`]+'), re(GPT2), re('[0-9][0-9][0-9]')],
};
const SPEC_STARCODER = { regexes: [re('\\p{N}'), re(GPT2)] };

type Entry = [names: string[], kind: string, spec: { regexes: RegExp[] }, flags: Omit<PreTokenizerSpec, 'kind' | 'regexes'>];

// name(s) in tokenizer.ggml.pre -> llama.cpp pre-tokenizer type and the flags llama.cpp sets for those names
const TABLE: Entry[] = [
    [['default'], 'default', SPEC_DEFAULT, { cleanSpaces: true, ignoreMerges: false }],
    [['llama3', 'llama-v3', 'llama-bpe', 'falcon3', 'falcon-h1', 'pixtral', 'midm-2.0', 'lfm2', 'jina-v5-nano'], 'llama3',
        SPEC_LLAMA3, { cleanSpaces: true, ignoreMerges: true, addBos: true }],
    [['dbrx', 'smaug-bpe'], 'llama3', SPEC_LLAMA3, { cleanSpaces: true, ignoreMerges: false }],
    [['deepseek-llm'], 'deepseek-llm', SPEC_DEEPSEEK_LLM, { cleanSpaces: false, ignoreMerges: false }],
    [['deepseek-coder'], 'deepseek-coder', SPEC_DEEPSEEK_CODER, { cleanSpaces: false, ignoreMerges: false }],
    [['falcon'], 'falcon', SPEC_FALCON, { cleanSpaces: true, ignoreMerges: false }],
    [['gpt-2', 'phi-2', 'jina-es', 'jina-de', 'gigachat', 'jina-v2-es', 'jina-v2-de', 'a.x-4.0', 'mellum', 'modern-bert', 'exaone4',
        'jina-v1-en', 'jina-v2-code', 'roberta-bpe', 'mpt', 'olmo', 'jais'], 'gpt2', SPEC_GPT2,
        { cleanSpaces: true, ignoreMerges: false }],
    [['trillion', 'granite-docling'], 'gpt2', SPEC_GPT2, { cleanSpaces: false, ignoreMerges: false }],
    [['starcoder', 'refact', 'codeshell', 'exaone', 'minerva-7b'], 'starcoder', SPEC_STARCODER,
        { cleanSpaces: true, ignoreMerges: false }],
    [['command-r', 'smollm'], 'starcoder', SPEC_STARCODER, { cleanSpaces: false, ignoreMerges: false }],
    [['qwen2', 'deepseek-r1-qwen', 'kormo', 'f2llmv2', 'hunyuan', 'grok-2'], 'qwen2', SPEC_QWEN2,
        { cleanSpaces: false, ignoreMerges: false }],
    [['megrez', 'stablelm2'], 'qwen2', SPEC_QWEN2, { cleanSpaces: true, ignoreMerges: false }],
];

const BY_NAME = new Map<string, PreTokenizerSpec>();
for (const [names, kind, spec, flags] of TABLE) {
    for (const name of names) BY_NAME.set(name, { kind, regexes: spec.regexes, ...flags });
}

/** Every `tokenizer.ggml.pre` value this module implements. */
export const SUPPORTED_PRE_TOKENIZERS: readonly string[] = [...BY_NAME.keys()];

export function findPreTokenizer(name: string): PreTokenizerSpec | undefined {
    return BY_NAME.get(name);
}

function isNonAsciiSpace(c: number): boolean {
    return c === 0x85 || c === 0xa0 || c === 0x1680 || (c >= 0x2000 && c <= 0x200a) || c === 0x2028 ||
        c === 0x2029 || c === 0x202f || c === 0x205f || c === 0x3000;
}

/** Rewrites non-ASCII whitespace to \v (same length, so offsets carry over to the original text). */
function normalizeWhitespace(text: string): string {
    let changed = false;
    for (let i = 0; i < text.length; i++) {
        const c = text.charCodeAt(i);
        if (c >= 0x85 && isNonAsciiSpace(c)) { changed = true; break; }
    }
    if (!changed) return text;
    let out = '';
    for (let i = 0; i < text.length; i++) {
        const c = text.charCodeAt(i);
        out += c >= 0x85 && isNonAsciiSpace(c) ? '\v' : text[i];
    }
    return out;
}

/**
 * Splits `text` into pre-tokens, returned as boundaries: `ends[k]` is the exclusive end (UTF-16 offset) of
 * pre-token k, which starts at `ends[k - 1]` (or 0).
 */
export function preTokenize(text: string, regexes: readonly RegExp[]): number[] {
    const subject = normalizeWhitespace(text);
    let ends = [subject.length];
    for (const regex of regexes) {
        const next: number[] = [];
        let start = 0;
        for (const end of ends) {
            const chunk = start === 0 && end === subject.length ? subject : subject.slice(start, end);
            regex.lastIndex = 0;
            let last = 0;
            for (let m = regex.exec(chunk); m !== null; m = regex.exec(chunk)) {
                const len = m[0].length;
                if (len === 0) { regex.lastIndex++; continue; }
                if (m.index > last) next.push(start + m.index);
                next.push(start + m.index + len);
                last = m.index + len;
            }
            if (last < chunk.length) next.push(end);
            start = end;
        }
        ends = next;
    }
    return ends;
}
