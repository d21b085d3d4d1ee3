/*
 * Special-token partition (llama.cpp `tokenizer_st_partition`): before the text reaches SPM or BPE, every
 * occurrence of a control, user-defined or unknown token's text is cut out and becomes that token.
 * Tokens are tried longest text first; each one splits all text fragments left by the previous ones.
 * Control and unknown tokens are only cut out when `parseSpecial` is set; user-defined tokens always are
 * (as HF tokenizers pre-split added tokens). LSTRIP/RSTRIP tokens also swallow the ASCII whitespace
 * (C `isspace`) before/after them.
 */
import { TOKEN_ATTR, type Vocab } from './vocab.js';

/** A piece of the input: raw text [start, end) of the original string, or an already-decided token id. */
export type Fragment = { start: number; end: number; token?: undefined } | { token: number };

function isCSpace(c: number): boolean {
    return c === 0x20 || (c >= 0x09 && c <= 0x0d);
}

export function partitionSpecial(vocab: Vocab, text: string, parseSpecial: boolean): Fragment[] {
    let fragments: Fragment[] = text.length > 0 ? [{ start: 0, end: text.length }] : [];
    for (const id of vocab.specialCache) {
        const attr = vocab.attrs[id]!;
        if (!parseSpecial && (attr & (TOKEN_ATTR.CONTROL | TOKEN_ATTR.UNKNOWN))) continue;
        const needle = vocab.texts[id]!;
        if (!text.includes(needle)) continue;
        const next: Fragment[] = [];
        for (const fragment of fragments) {
            if (fragment.token !== undefined) {
                next.push(fragment);
                continue;
            }
            let start = fragment.start;
            let end = fragment.end;
            while (start < end) {
                const match = text.indexOf(needle, start);
                if (match < 0 || match + needle.length > end) {
                    next.push({ start, end });
                    break;
                }
                let leftEnd = match;
                if (attr & TOKEN_ATTR.LSTRIP) {
                    while (leftEnd > start && isCSpace(text.charCodeAt(leftEnd - 1))) leftEnd--;
                }
                if (leftEnd > start) next.push({ start, end: leftEnd });
                next.push({ token: id });
                start = match + needle.length;
                if (attr & TOKEN_ATTR.RSTRIP) {
                    while (start < end && isCSpace(text.charCodeAt(start))) start++;
                }
            }
        }
        fragments = next;
    }
    return fragments;
}
