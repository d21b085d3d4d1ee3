"""Learnability probes and teacher-forced error maps for the tiny reasoner (diagnostics; nothing here is needed
to train or export the model).

    # per-column teacher-forced error rates of a checkpoint on held-out problems (which step of a chain fails)
    /usr/bin/python3 tiny/probe.py errors tiny/checkpoints/run4/ckpt.pt --n 20
    # a fresh model trained on one task with chosen sizes: does a circuit form within a step budget?
    /usr/bin/python3 tiny/probe.py train --task chase --min 8 --max 8 --hops 8 --steps 600 -- --n-head 4 --n-head-kv 2

Columns count characters from the start of each chain line (line 0 is the first line after `<think>`); with the
tasks of tasks.py, `chase` lines `07 Z>s` have the key in column 3 (copied from the value above) and the value in
column 5 (looked up in the table); `cups` lines `a25 3` the swap in columns 1-2 (looked up by its label) and the
ball in column 4; `add` pass-1 lines `g8+G7+0=15` the looked-up digits in columns 1 and 4 and the sum in 8-9.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tasks  # noqa: E402
import train  # noqa: E402

NEWLINE = tasks.encode("\n")[0]


def column_errors(model, task: str, n: int, base: int) -> tuple[collections.Counter, collections.Counter]:
    """Teacher-forced argmax errors per (line class, column): line 0, line 1, lines >= 2 (columns >= 12 pooled)."""
    err, tot = collections.Counter(), collections.Counter()
    model.eval()
    for s in range(n):
        toks, start = tasks.example_tokens(tasks.example(task, base + s))
        with torch.no_grad():
            pred = model(torch.tensor(toks), [(0, len(toks))]).argmax(-1).tolist()
        col = line = 0
        for i in range(start, len(toks)):
            key = (min(line, 2), min(col, 12))
            tot[key] += 1
            err[key] += pred[i - 1] != toks[i]
            if toks[i] == NEWLINE:
                col, line = 0, line + 1
            else:
                col += 1
    model.train()
    return err, tot


def fmt(err, tot, lines=(0, 1, 2)) -> str:
    return " ".join(f"L{k[0]}c{k[1]}:{err[k]}/{tot[k]}" for k in sorted(tot) if k[0] in lines and err[k])


def cmd_errors(a) -> None:
    ck = torch.load(a.ckpt, map_location="cpu")
    args = argparse.Namespace(**ck["args"])
    m = train.Model(args)
    m.load_state_dict(ck["model"])
    torch.set_num_threads(a.threads)
    print(f"{a.ckpt}: step {ck['step']}")
    for task in tasks.TASKS:
        err, tot = column_errors(m, task, a.n, tasks.TEST_BASE[task])
        print(f"{task:6s} {sum(err.values())}/{sum(tot.values())} wrong; {fmt(err, tot)}")


def cmd_train(a, extra: list[str]) -> None:
    tasks.TASKS = (a.task,)
    tasks.CHASE_MIN, tasks.CHASE_MAX, tasks.CHASE_HOPS = a.min, a.max, a.hops
    tasks.CUPS_MIN, tasks.CUPS_MAX = a.min, a.max
    targs = train.parse_args(["--out", "/tmp/tiny-probe", "--tokens", str(a.tokens), "--lr", str(a.lr), "--warmup", "30",
                              "--steps", str(a.steps), "--decay-steps", "1"] + extra)
    torch.manual_seed(1)
    torch.set_num_threads(a.threads)
    m = train.Model(targs)
    opt = train.make_optimizer(m, targs)
    t0, acc = time.time(), 0.0
    for step in range(a.steps):
        idx, tgt, segs = train.make_batch(targs, step)
        for g in opt.param_groups:
            g["lr"] = train.lr_at(targs, step)
        loss = F.cross_entropy(m(idx, segs), tgt, ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        acc += float(loss)
        if (step + 1) % a.every == 0:
            err, tot = column_errors(m, a.task, 10, tasks.TEST_BASE[a.task])
            print(f"{step + 1} loss {acc / a.every:.3f} {fmt(err, tot, (2,))} {time.time() - t0:.0f}s", flush=True)
            acc = 0.0


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("errors")
    e.add_argument("ckpt")
    e.add_argument("--n", type=int, default=20)
    e.add_argument("--threads", type=int, default=2)
    t = sub.add_parser("train")
    t.add_argument("--task", choices=tasks.TASKS, default="chase")
    t.add_argument("--min", type=int, default=8)
    t.add_argument("--max", type=int, default=8)
    t.add_argument("--hops", type=int, default=8)
    t.add_argument("--steps", type=int, default=600)
    t.add_argument("--every", type=int, default=50)
    t.add_argument("--tokens", type=int, default=2048)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    if a.cmd == "errors":
        cmd_errors(a)
    else:
        cmd_train(a, extra)


if __name__ == "__main__":
    main()
