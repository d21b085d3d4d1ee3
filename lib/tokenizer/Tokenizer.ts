/*
 * Tokenizer: text <-> token ids from GGUF tokenizer metadata, token-for-token equal to llama.cpp
 * (`llama_tokenize`, `llama_token_to_piece`, `llama_detokenize`). SentencePiece vocabularies (`llama`) go
 * through spm.ts, byte-level BPE vocabularies (`gpt2`) through bpe.ts; both first cut special tokens out of
 * the text (special-partition.ts).
 * Invariants: a Tokenizer is immutable after construction; expensive tables (BPE merge ranks, piece cache) are
 * built lazily, once. Token ids are plain numbers in [0, vocabSize).
 */
import { InvalidOptionsError } from '../errors.js';
import { decodeByteLevel } from './byte-level.js';
import { BpeEncoder } from './bpe.js';
import { partitionSpecial } from './special-partition.js';
import { spmTokenize, spmTokenToByte } from './spm.js';
import { TokenStreamDecoder } from './TokenStreamDecoder.js';
import { runSteps, runStepsAsync } from '../steps.js';
import { attrToType, loadVocabSteps, TOKEN_ATTR, type SpecialTokenIds, type TokenizerModel, type Vocab } from './vocab.js';

export interface EncodeOptions {
    /** Prepend BOS. Default: the model's `tokenizer.ggml.add_bos_token` (llama.cpp's defaults when absent). */
    addBos?: boolean;
    /** Append EOS. Default: the model's `tokenizer.ggml.add_eos_token` (usually false). */
    addEos?: boolean;
    /** Turn the text of control tokens (`<|im_start|>`, `<s>`...) into those tokens. Default false. */
    parseSpecial?: boolean;
}

export interface DecodeOptions {
    /** Render control and unknown tokens as their text. Default false (what llama-cli prints). */
    special?: boolean;
    /** Drop a leading BOS / trailing EOS when the model adds them. Default false. */
    removeSpecial?: boolean;
    /** Apply llama.cpp's clean-up of " ," " 's" etc. Default: per pre-tokenizer (`clean_spaces`). */
    cleanSpaces?: boolean;
}

export interface PieceOptions {
    /** Return the text of control and unknown tokens; when false they are empty. Default true. */
    special?: boolean;
}

export interface StreamDecoderOptions {
    /** Render control and unknown tokens as their text. Default false. */
    special?: boolean;
}

const utf8Encoder = new TextEncoder();
const EMPTY = new Uint8Array(0);
const SPACE = 0x20;

export class Tokenizer {
    /** `tokenizer.ggml.model`: 'llama' (SentencePiece) or 'gpt2' (byte-level BPE). */
    readonly model: TokenizerModel;
    /** `tokenizer.ggml.pre` ('' when absent). */
    readonly pre: string;
    readonly vocabSize: number;
    /** Whether encode() prepends BOS by default. */
    readonly addBos: boolean;
    /** Whether encode() appends EOS by default. */
    readonly addEos: boolean;
    /** SPM: a space is prepended to text at the start and after special tokens; decode() removes it again. */
    readonly addSpacePrefix: boolean;
    /** Default of DecodeOptions.cleanSpaces. */
    readonly cleanSpaces: boolean;
    readonly specialTokens: Readonly<SpecialTokenIds>;
    /** Every end-of-generation token (EOS, EOT, EOM, FIM pad/repo/sep and the known end-of-turn texts). */
    readonly eogTokens: readonly number[];

    private readonly vocab: Vocab;
    private bpe: BpeEncoder | null = null;
    private readonly pieces: Array<Uint8Array | undefined>;

    /** @param vocab (internal) the vocabulary already read from `metadata`, by createTokenizerAsync */
    constructor(metadata: Record<string, unknown>, vocab?: Vocab) {
        this.vocab = vocab ?? runSteps(loadVocabSteps(metadata));
        const v = this.vocab;
        this.model = v.model;
        this.pre = v.pre;
        this.vocabSize = v.texts.length;
        this.addBos = v.addBos;
        this.addEos = v.addEos;
        this.addSpacePrefix = v.addSpacePrefix;
        this.cleanSpaces = v.cleanSpaces;
        this.specialTokens = Object.freeze({ ...v.special });
        this.eogTokens = Object.freeze([...v.eog].sort((a, b) => a - b));
        this.pieces = new Array<Uint8Array | undefined>(this.vocabSize);
    }

    get bos(): number | null { return this.vocab.special.bos; }
    get eos(): number | null { return this.vocab.special.eos; }
    get eot(): number | null { return this.vocab.special.eot; }

    /** True for tokens that end generation (llama.cpp `llama_vocab_is_eog`). */
    isEog(id: number): boolean {
        return this.vocab.eog.has(id);
    }

    /**
     * Text to token ids, as llama.cpp's `llama_tokenize(text, add_special, parse_special)`.
     * @example
     * const ids = tokenizer.encode('<|im_start|>user\nHi<|im_end|>', { parseSpecial: true });
     */
    encode(text: string, options: EncodeOptions = {}): number[] {
        const out: number[] = [];
        for (const _ of this.encodeSteps(text, options, out)) { /* (all at once) */ }
        return out;
    }

    /**
     * encode() that gives the event loop a turn every few milliseconds: the same ids, for long texts in
     * servers (the tokenizer test prints the cost: ~12 ms per 10k characters of qwen2 BPE on the CI machine). BPE vocabularies yield between pre-tokens; an
     * SPM fragment (llama vocabularies) is tokenized whole.
     */
    async encodeAsync(text: string, options: EncodeOptions = {}, sliceMs = 4): Promise<number[]> {
        const out: number[] = [];
        await this._prepareAsync(sliceMs);
        await runStepsAsync(this.encodeSteps(text, options, out), sliceMs);
        return out;
    }

    /** @internal Builds the lazily built tables (BPE merge ranks) with turns for the event loop. */
    async _prepareAsync(sliceMs = 4): Promise<void> {
        if (this.vocab.model !== 'gpt2') return;
        this.bpe ??= new BpeEncoder(this.vocab);
        await this.bpe.prepareAsync(sliceMs);
    }

    private *encodeSteps(text: string, options: EncodeOptions, out: number[]): Generator<void, void, void> {
        if (typeof text !== 'string') {
            throw new InvalidOptionsError(`encode: text must be a string but is ${typeof text}`, 'ERR_INVALID_ARG');
        }
        const v = this.vocab;
        const addBos = options.addBos ?? v.addBos;
        const addEos = options.addEos ?? v.addEos;
        if (addBos) {
            if (v.special.bos !== null) out.push(v.special.bos);
            else if (options.addBos === true) {
                throw new InvalidOptionsError('encode: addBos is true but the vocabulary has no BOS token', 'ERR_INVALID_ARG');
            }
        }
        const fragments = partitionSpecial(v, text, options.parseSpecial ?? false);
        if (v.model === 'llama') {
            let prevSpecial = true;  // the first fragment gets the space prefix too
            for (const fragment of fragments) {
                if (fragment.token !== undefined) {
                    out.push(fragment.token);
                    prevSpecial = true;
                    continue;
                }
                const raw = text.slice(fragment.start, fragment.end);
                const prefixed = v.addSpacePrefix && prevSpecial ? ` ${raw}` : raw;
                spmTokenize(v, prefixed.replaceAll(' ', '\u2581'), out);
                prevSpecial = false;
                yield;
            }
        } else {
            this.bpe ??= new BpeEncoder(v);
            for (const fragment of fragments) {
                if (fragment.token !== undefined) out.push(fragment.token);
                else yield* this.bpe.encodeSteps(text.slice(fragment.start, fragment.end), out);
            }
        }
        if (addEos) {
            if (v.special.eos !== null) out.push(v.special.eos);
            else if (options.addEos === true) {
                throw new InvalidOptionsError('encode: addEos is true but the vocabulary has no EOS token', 'ERR_INVALID_ARG');
            }
        }
    }

    /**
     * The bytes a token stands for (llama.cpp `llama_token_to_piece` with lstrip 0). May be part of a UTF-8
     * character; use createDecoder() to turn a stream of pieces into text.
     */
    tokenToPiece(id: number, options: PieceOptions = {}): Uint8Array {
        this.checkId(id, 'tokenToPiece');
        if (!(options.special ?? true) && (this.vocab.attrs[id]! & (TOKEN_ATTR.CONTROL | TOKEN_ATTR.UNKNOWN))) {
            return EMPTY;
        }
        let piece = this.pieces[id];
        if (piece === undefined) {
            piece = this.buildPiece(id);
            this.pieces[id] = piece;
        }
        return piece;
    }

    /** Token ids to bytes, as llama.cpp's `llama_detokenize` (leading-space removal, optional clean-up). */
    decodeBytes(ids: ArrayLike<number>, options: DecodeOptions = {}): Uint8Array {
        const v = this.vocab;
        const special = options.special ?? false;
        let first = 0;
        let last = ids.length;
        let removeSpace = v.addSpacePrefix;
        if (options.removeSpecial && v.addBos && last > first && ids[first] === v.special.bos) {
            removeSpace = false;
            first++;
        }
        if (options.removeSpecial && v.addEos && last > first && ids[last - 1] === v.special.eos) last--;

        const chunks: Uint8Array[] = [];
        let total = 0;
        for (let i = first; i < last; i++) {
            let piece = this.tokenToPiece(ids[i]!, { special });
            if (removeSpace && piece.length > 0 && piece[0] === SPACE) piece = piece.subarray(1);
            removeSpace = false;
            chunks.push(piece);
            total += piece.length;
        }
        let bytes: Uint8Array = new Uint8Array(total);
        let offset = 0;
        for (const chunk of chunks) {
            bytes.set(chunk, offset);
            offset += chunk.length;
        }
        if (options.cleanSpaces ?? v.cleanSpaces) bytes = cleanUpSpaces(bytes);
        return bytes;
    }

    /**
     * Token ids to text. Bytes that do not form valid UTF-8 become U+FFFD.
     * @example tokenizer.decode(tokenizer.encode('Hello world', { addBos: false })) === 'Hello world'
     */
    decode(ids: ArrayLike<number>, options: DecodeOptions = {}): string {
        return new TextDecoder('utf-8', { ignoreBOM: true }).decode(this.decodeBytes(ids, options));
    }

    /** An incremental detokenizer for streaming; see TokenStreamDecoder. */
    createDecoder(options: StreamDecoderOptions = {}): TokenStreamDecoder {
        const pieceOptions: PieceOptions = { special: options.special ?? false };
        return new TokenStreamDecoder((id) => this.tokenToPiece(id, pieceOptions));
    }

    /** The token's text as stored in the vocabulary (byte-level or '▁'-escaped, not decoded). */
    tokenText(id: number): string {
        this.checkId(id, 'tokenText');
        return this.vocab.texts[id]!;
    }

    /** The token's GGUF type (TOKEN_TYPE), after llama.cpp's overrides of control-looking tokens. */
    tokenType(id: number): number {
        this.checkId(id, 'tokenType');
        return attrToType(this.vocab.attrs[id]!);
    }

    /** The id of the token whose vocabulary text is exactly `text`, if any. */
    tokenId(text: string): number | undefined {
        return this.vocab.tokenToId.get(text);
    }

    private checkId(id: number, fn: string): void {
        if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
            throw new InvalidOptionsError(`${fn}: token id ${id} is out of range [0, ${this.vocabSize})`, 'ERR_INVALID_ARG');
        }
    }

    private buildPiece(id: number): Uint8Array {
        const v = this.vocab;
        const attr = v.attrs[id]!;
        const text = v.texts[id]!;
        if (attr & (TOKEN_ATTR.CONTROL | TOKEN_ATTR.UNKNOWN | TOKEN_ATTR.USER_DEFINED)) return utf8Encoder.encode(text);
        if (v.model === 'llama') {
            if (attr & TOKEN_ATTR.NORMAL) return utf8Encoder.encode(text.replaceAll('\u2581', ' '));
            if (attr & TOKEN_ATTR.BYTE) return Uint8Array.of(spmTokenToByte(v, id));
            return EMPTY;  // unused / undefined tokens render as nothing
        }
        if (attr & TOKEN_ATTR.NORMAL) return decodeByteLevel(text);
        if (attr & TOKEN_ATTR.BYTE) return Uint8Array.of(spmTokenToByte(v, id));  // SPM-style <0xXX> in a BPE vocab
        return EMPTY;
    }
}

/**
 * llama.cpp's `clean_spaces` passes (HF `clean_up_tokenization`): " ?" " !" " ." " ," lose the space,
 * " ' " becomes "'", and " 's" " 'm" " 're" " 've" lose the space.
 */
function cleanUpSpaces(input: Uint8Array): Uint8Array {
    const APOS = 0x27;
    // pass 1: space before ? ! . ,
    let src = input;
    let dst: number[] = [];
    for (let i = 0; i < src.length; i++) {
        const x = src[i]!;
        if (i > 0 && src[i - 1] === SPACE && (x === 0x3f || x === 0x21 || x === 0x2e || x === 0x2c)) dst.pop();
        dst.push(x);
    }
    // pass 2: " ' " -> "'"
    src = Uint8Array.from(dst);
    dst = [];
    for (let i = 0; i < src.length; i++) {
        const x = src[i]!;
        if (i > 0 && x === APOS && i + 1 < src.length && src[i - 1] === SPACE && src[i + 1] === SPACE) {
            dst.pop();
            dst.push(x);
            src[++i] = 0;  // drop the space after; llama.cpp zeroes it, so it cannot start another " ' "
            continue;
        }
        dst.push(x);
    }
    // pass 3: contractions " 's" " 'm" " 're" " 've"
    src = Uint8Array.from(dst);
    dst = [];
    for (let i = 0; i < src.length; i++) {
        const x = src[i]!;
        if (i > 0 && src[i - 1] === SPACE && x === APOS && i + 1 < src.length) {
            const x1 = src[i + 1]!;
            const x2 = i + 2 < src.length ? src[i + 2]! : -1;
            const drop = x1 === 0x73 || x1 === 0x6d ||
                (x2 !== -1 && x1 !== 0x74 && x1 !== 0x64 && ((x1 === 0x72 && x2 === 0x65) || (x1 === 0x76 && x2 === 0x65)));
            if (drop) dst.pop();
        }
        dst.push(x);
    }
    return Uint8Array.from(dst);
}

/**
 * Builds a tokenizer from flat GGUF metadata (`{ 'tokenizer.ggml.model': 'gpt2', 'tokenizer.ggml.tokens': [...] }`).
 * Throws UnsupportedModelError for tokenizer models or pre-tokenizers it does not implement and GgufFormatError
 * for missing or malformed keys.
 * @example
 * const tokenizer = createTokenizer(await readGgufMetadata('model.gguf'));
 * tokenizer.encode('Hello world'); // [bos?, ...]
 */
export function createTokenizer(metadata: Record<string, unknown>): Tokenizer {
    return new Tokenizer(metadata);
}

/**
 * createTokenizer() that gives the event loop a turn every few milliseconds while it reads the vocabulary and
 * builds the BPE merge ranks (tens of milliseconds at once for a 150k vocabulary: tokenizer.test.ts prints
 * both). loadModel() uses it.
 */
export async function createTokenizerAsync(metadata: Record<string, unknown>, sliceMs = 4): Promise<Tokenizer> {
    const tokenizer = new Tokenizer(metadata, await runStepsAsync(loadVocabSteps(metadata), sliceMs));
    await tokenizer._prepareAsync(sliceMs);
    return tokenizer;
}
