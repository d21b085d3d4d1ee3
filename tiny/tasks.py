"""Synthetic reasoning tasks with verifiable answers and long R1-style chains of thought, and the
character-level SentencePiece-style vocabulary of the tiny reasoner.

Every example is a chat: the user asks, the assistant answers `<think>\n{chain}\n</think>\n\n{answer}`.
Three tasks (all seeded; an example depends only on (task, seed)). Every line is fixed-width and every look-up
is keyed by one token that occurs exactly once before its query (or only with the same continuation), so each
step is an induction-style look-up or a copy from the same column of the line above — circuits a 4-layer model
learns in a CPU budget. (Tasks v2 keyed chase by letters that were both keys and values, and cups by labels
that also occurred in the prompt's words: the model learned no look-up at all; 52-way letter copies also
stalled at head_dim 32.)

- `add`:   column addition of two n-digit numbers (n = 5..12). The question also gives the digits labelled
           (a..l for the first number, A..L for the second). Pass 1 works right to left, one column per line
           (`g8+G7+0=15 s5`: both digits looked up by label, the carry from the line above, the two-digit sum,
           and its unit digit again under the column's tag m..x); pass 2 builds the answer left to right in a
           fixed-width field (`o9|529.......`: the unit digit looked up by its tag, the rest copied from the
           line above); the answer copies the last field.
- `chase`: pointer chasing in a table given in the prompt: 8..26 upper-case keys, each line `Ks` giving the
           next key in lower case (one cycle through all keys); 6..40 hops (`07 Ks`: the key is the upper-case
           of the value above, its value looked up in the table; longer walks go round the cycle again).
- `cups`:  state tracking: where the ball is after 10..26 cup swaps labelled A..Z in the prompt
           (prompt `A25`, chain `A25 3`: the swap looked up by its label, the ball from the line above).

Examples are ~120..~530 tokens (the vocabulary is one token per character). Run as a script to write the
held-out test sets: `/usr/bin/python3 tiny/tasks.py --write-tests tiny/data` (seeds disjoint from training).
"""
from __future__ import annotations

import json
import random
import string
import sys

TASKS = ("add", "chase", "cups")

# ----------------------------------------------------------------------------------------------------------
# Vocabulary (SentencePiece "llama" model, one token per character, byte fallback, no merges)

SPACE = "\u2581"
UNK, BOS, EOS = 0, 1, 2
# llama.cpp token types
T_NORMAL, T_UNKNOWN, T_CONTROL, T_USER_DEFINED, T_BYTE = 1, 2, 3, 4, 6
SPECIALS = [("<|im_start|>", T_CONTROL), ("<|im_end|>", T_CONTROL), ("<think>", T_USER_DEFINED), ("</think>", T_USER_DEFINED)]
CHARS = [SPACE] + [chr(c) for c in range(0x21, 0x7F)]
# the tokens llama.cpp matches in text when parsing specials (CONTROL, USER_DEFINED and UNKNOWN types)
PARSED_SPECIALS = ["<unk>", "<s>", "</s>"] + [s for s, _ in SPECIALS]


def build_vocab():
    tokens = ["<unk>", "<s>", "</s>"]
    types = [T_UNKNOWN, T_CONTROL, T_CONTROL]
    for b in range(256):
        tokens.append("<0x%02X>" % b)
        types.append(T_BYTE)
    for s, t in SPECIALS:
        tokens.append(s)
        types.append(t)
    for c in CHARS:
        tokens.append(c)
        types.append(T_NORMAL)
    scores = [0.0] * len(tokens)
    for i, t in enumerate(types):
        if t == T_NORMAL:
            scores[i] = -float(i)
    return tokens, types, scores


TOKENS, TOKEN_TYPES, SCORES = build_vocab()
TOKEN_ID = {t: i for i, t in enumerate(TOKENS)}
IM_START, IM_END = TOKEN_ID["<|im_start|>"], TOKEN_ID["<|im_end|>"]
THINK, END_THINK = TOKEN_ID["<think>"], TOKEN_ID["</think>"]
N_VOCAB = len(TOKENS)

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def encode(text: str) -> list[int]:
    """What llama.cpp's SPM tokenizer produces for this vocab with add_space_prefix = false and special
    parsing on (no BOS): special tokens by longest match, spaces as U+2581, characters missing from the
    vocabulary (newline, non-ASCII) as their UTF-8 bytes."""
    out: list[int] = []
    i = 0
    n = len(text)
    while i < n:
        if text[i] == "<":
            hit = None
            for s in PARSED_SPECIALS:
                if text.startswith(s, i) and (hit is None or len(s) > len(hit)):
                    hit = s
            if hit is not None:
                out.append(TOKEN_ID[hit])
                i += len(hit)
                continue
        c = text[i]
        c = SPACE if c == " " else c
        tid = TOKEN_ID.get(c)
        if tid is not None and TOKEN_TYPES[tid] == T_NORMAL:
            out.append(tid)
        else:
            for b in c.encode("utf-8"):
                out.append(3 + b)
        i += 1
    return out


def decode(ids: list[int]) -> str:
    bs = bytearray()
    for t in ids:
        ty = TOKEN_TYPES[t]
        if ty == T_BYTE:
            bs.append(t - 3)
        elif ty == T_NORMAL:
            bs += TOKENS[t].replace(SPACE, " ").encode("utf-8")
        elif ty == T_USER_DEFINED:
            bs += TOKENS[t].encode("utf-8")
    return bs.decode("utf-8", errors="replace")


def prompt_text(question: str) -> str:
    """The chat template with add_generation_prompt (without the BOS token, which the tokenizer adds)."""
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def completion_text(chain: str, answer: str) -> str:
    return f"<think>\n{chain}\n</think>\n\n{answer}<|im_end|>"


# ----------------------------------------------------------------------------------------------------------
# Tasks

LOWER = string.ascii_lowercase
UPPER = string.ascii_uppercase

# sizes (training and test sets share them)
ADD_MIN, ADD_MAX = 5, 12
ADD_WIDTH = ADD_MAX + 1
CHASE_MIN, CHASE_MAX, CHASE_HOPS = 8, 26, 40
CUPS_MIN, CUPS_MAX = 10, 26
# add: digits of the first number are labelled a..l, of the second A..L, the unit digits of the sum m..x
ADD_TAGS = LOWER[ADD_MAX:2 * ADD_MAX]


def gen_add(rng: random.Random) -> dict:
    n = rng.randint(ADD_MIN, ADD_MAX)
    a = [rng.randint(1, 9)] + [rng.randint(0, 9) for _ in range(n - 1)]
    b = [rng.randint(1, 9)] + [rng.randint(0, 9) for _ in range(n - 1)]
    sa, sb = "".join(map(str, a)), "".join(map(str, b))
    question = (f"{sa}+{sb}=?\n" + " ".join(LOWER[i] + str(a[i]) for i in range(n)) + "\n"
                + " ".join(UPPER[i] + str(b[i]) for i in range(n)))
    # pass 1, right to left: one column per line: both digits looked up by label, the carry from the line above,
    # the two-digit sum, and its unit digit again under the column's tag (the key pass 2 looks it up by)
    lines = []
    carry = 0
    digits = [0] * n
    for i in range(n - 1, -1, -1):
        s = a[i] + b[i] + carry
        lines.append(f"{LOWER[i]}{a[i]}+{UPPER[i]}{b[i]}+{carry}={s:02d} {ADD_TAGS[i]}{s % 10}")
        digits[i] = s % 10
        carry = s // 10
    # pass 2, left to right: the answer grows one digit per line in a fixed-width field, so every copy is from
    # the same column of the line above (and the answer below copies the last line's field)
    partial = "1" if carry else ""
    lines.append(f"+{carry}|" + partial.ljust(ADD_WIDTH, "."))
    for i in range(n):
        partial += str(digits[i])
        lines.append(f"{ADD_TAGS[i]}{digits[i]}|" + partial.ljust(ADD_WIDTH, "."))
    answer = str(int(sa) + int(sb))
    assert answer == partial
    return {"question": question, "chain": "\n".join(lines), "answer": answer}


def gen_chase(rng: random.Random) -> dict:
    n = rng.randint(CHASE_MIN, CHASE_MAX)
    hops = rng.randint(6, CHASE_HOPS)
    keys = rng.sample(UPPER, n)
    # one cycle through all keys; a walk longer than the cycle revisits keys, whose hop lines then agree with the
    # table (every earlier occurrence of an upper-case key is followed by the same value)
    table = {keys[i]: keys[(i + 1) % n] for i in range(n)}
    order = keys[:]
    rng.shuffle(order)
    start = rng.choice(keys)
    lines = []
    cur = start
    for h in range(hops, 0, -1):
        nxt = table[cur]
        lines.append(f"{h:02d} {cur}{nxt.lower()}")
        cur = nxt
    question = ("table:\n" + "\n".join(f"{k}{table[k].lower()}" for k in order)
                + f"\nfrom {start.lower()}, follow {hops:02d} steps.")
    return {"question": question, "chain": "\n".join(lines), "answer": cur}


def gen_cups(rng: random.Random) -> dict:
    m = rng.randint(4, 8)
    cups = "12345678"[:m]
    n = rng.randint(CUPS_MIN, CUPS_MAX)
    ball = rng.choice(cups)
    swaps = [rng.sample(cups, 2) for _ in range(n)]
    question = (f"cups {cups[0]}-{cups[-1]}, the ball is under {ball}. swaps:\n"
                + "\n".join(f"{UPPER[i]}{x}{y}" for i, (x, y) in enumerate(swaps)) + "\nwhere is the ball?")
    lines = [f"start {ball}"]
    for i, (x, y) in enumerate(swaps):
        if ball == x:
            ball = y
        elif ball == y:
            ball = x
        lines.append(f"{UPPER[i]}{x}{y} {ball}")
    return {"question": question, "chain": "\n".join(lines), "answer": ball}


GENERATORS = {"add": gen_add, "chase": gen_chase, "cups": gen_cups}

# Seeds: training examples use (TRAIN_BASE + step stream), test sets TEST_BASE + index; the ranges never meet.
TEST_BASE = {"add": 9_000_000, "chase": 9_100_000, "cups": 9_200_000}
CALIB_BASE = {"add": 9_500_000, "chase": 9_600_000, "cups": 9_700_000}  # head-profile calibration (tiny/data/calib.jsonl)


def example(task: str, seed: int) -> dict:
    ex = GENERATORS[task](random.Random(f"{task}:{seed}"))
    ex["task"] = task
    ex["seed"] = seed
    return ex


def example_tokens(ex: dict) -> tuple[list[int], int]:
    """[BOS] + prompt + completion as token ids, and the index of the first completion token."""
    p = [BOS] + encode(prompt_text(ex["question"]))
    c = encode(completion_text(ex["chain"], ex["answer"]))
    return p + c, len(p)


def test_set(task: str, n: int) -> list[dict]:
    return [example(task, TEST_BASE[task] + i) for i in range(n)]


def main(argv: list[str]) -> None:
    if len(argv) >= 2 and argv[0] == "--write-tests":
        out = argv[1]
        n = int(argv[2]) if len(argv) > 2 else 100
        import os
        os.makedirs(out, exist_ok=True)
        for t in TASKS:
            with open(os.path.join(out, f"test-{t}.jsonl"), "w") as f:
                for ex in test_set(t, n):
                    f.write(json.dumps({"task": t, "seed": ex["seed"], "question": ex["question"], "answer": ex["answer"], "chain": ex["chain"]}) + "\n")
        return
    if len(argv) >= 2 and argv[0] == "--write-calib":
        # calibration problems for head profiles (thinkcache profile-heads --prompts): seeds disjoint from the test sets
        n = int(argv[2]) if len(argv) > 2 else 4
        with open(argv[1], "w") as f:
            for t in TASKS:
                for i in range(n):
                    ex = example(t, CALIB_BASE[t] + i)
                    f.write(json.dumps({"task": t, "seed": ex["seed"], "question": ex["question"], "answer": ex["answer"]}) + "\n")
        return
    if len(argv) >= 2 and argv[0] == "--dump-tokens":
        # texts (without BOS) and our token ids, for the tokenizer cross-check against lib/ and llama.cpp
        rows = []
        for t in TASKS:
            for s in range(int(argv[2]) if len(argv) > 2 else 5):
                ex = example(t, s)
                text = prompt_text(ex["question"]) + completion_text(ex["chain"], ex["answer"])
                rows.append({"task": t, "text": text, "ids": encode(text)})
        extra = ["héllo wörld ✓ 日本", "  two  spaces\tand tab\n\nend ", "<think>x</think> <|im_end|><|im_start|>", "a<b>c </s> <s> <unk>"]
        for text in extra:
            rows.append({"task": "extra", "text": text, "ids": encode(text)})
        with open(argv[1], "w") as f:
            json.dump({"n_vocab": N_VOCAB, "rows": rows}, f)
        return
    if argv and argv[0] == "--stats":
        for t in TASKS:
            lens = [len(example_tokens(example(t, s))[0]) for s in range(300)]
            cl = [len(encode(completion_text(example(t, s)["chain"], "x"))) for s in range(300)]
            print(t, "total min/mean/max", min(lens), sum(lens) // len(lens), max(lens), "completion", min(cl), sum(cl) // len(cl), max(cl))
        return
    for t in TASKS:
        ex = example(t, 1)
        print(prompt_text(ex["question"]) + completion_text(ex["chain"], ex["answer"]))
        print("-" * 40)


if __name__ == "__main__":
    main(sys.argv[1:])
