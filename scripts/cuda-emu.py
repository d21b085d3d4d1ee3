#!/usr/bin/env python3
"""Rewrites one CUDA source for the CPU emulation (native/cuda/emu/cuda_runtime.h):

    kernel<<<grid, block[, smem[, stream]]>>>(args);  ->  ::tc_emu::launch(::tc_emu::cfg(grid, block, ...), [&]() { kernel(args); });
    extern __shared__ T name[];                      ->  T * name = (T *) ::tc_emu::dyn_smem();
    __shared__                                       ->  static   (blocks run one at a time: a static is the block's)

Usage: cuda-emu.py IN.cu OUT.cpp
"""
import re
import sys


def rewrite(src: str, path: str) -> str:
    src = re.sub(r'extern\s+__shared__\s+([\w:]+)\s+(\w+)\s*\[\s*\]\s*;', r'\1 * \2 = (\1 *) ::tc_emu::dyn_smem();', src)
    src = re.sub(r'\b__shared__\b', 'static', src)
    out = []
    i = 0
    while True:
        j = src.find('<<<', i)
        if j < 0:
            out.append(src[i:])
            break
        # the kernel expression before <<<: a name, possibly qualified, possibly with template arguments
        m = re.search(r'([A-Za-z_][\w:]*\s*(?:<[^<>;()]*>)?)\s*$', src[i:j])
        if not m:
            raise SystemExit(f'{path}: cannot find the kernel name before <<< at offset {j}')
        name_start = i + m.start(1)
        k = src.find('>>>', j)
        if k < 0:
            raise SystemExit(f'{path}: <<< without >>> at offset {j}')
        cfg = src[j + 3:k]
        p = k + 3
        while src[p].isspace():
            p += 1
        if src[p] != '(':
            raise SystemExit(f'{path}: expected ( after >>> at offset {p}')
        depth, q = 0, p
        while True:
            c = src[q]
            if c == '(':
                depth += 1
            elif c == ')':
                depth -= 1
                if depth == 0:
                    break
            q += 1
        args = src[p + 1:q]
        out.append(src[i:name_start])
        out.append(f'::tc_emu::launch(::tc_emu::cfg({cfg}), [&]() {{ {m.group(1)}({args}); }})')
        i = q + 1
    return ''.join(out)


def main() -> None:
    inp, outp = sys.argv[1], sys.argv[2]
    with open(inp, encoding='utf-8') as f:
        src = f.read()
    text = f'#line 1 "{inp}"\n' + rewrite(src, inp)
    with open(outp, 'w', encoding='utf-8') as f:
        f.write(text)


if __name__ == '__main__':
    main()
