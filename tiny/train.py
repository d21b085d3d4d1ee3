"""Train the tiny reasoner: a Llama-shaped decoder (RMSNorm, GQA, RoPE in llama.cpp's NORM = interleaved-pair
style, SwiGLU, untied output) on the synthetic tasks of tasks.py, on the CPU with Debian's python3-torch, or on a
GPU (`--device cuda`: padded rows under one fused causal attention per layer, bf16 autocast, data-loader processes;
the same examples and the same loss as the CPU's packed stream; tiny/gpu-train.sh runs it inside a device call).

    sudo apt-get install -y python3-torch libopenblas0-pthread     # once (Debian packages, no pip)
    nice -n 19 /usr/bin/python3 tiny/train.py --out tiny/checkpoints/run1 > tiny/checkpoints/run1.log 2>&1 &
    /usr/bin/python3 tiny/train.py --out tiny/checkpoints/run1 --export tiny/checkpoints/run1/weights   # shape from the checkpoint

Seeded and reproducible: the batch of step s depends only on (seed, s); the model init only on the seed.
Resumable: rerun the same command, it continues from <out>/ckpt.pt (written every --ckpt-every-s seconds and
at the end, atomically). The learning rate is warmup-stable-decay; the checkpoint at the start of the decay is
also kept as <out>/ckpt-stable-<step>.pt, so a longer run can continue from it (copy it to ckpt.pt, raise --steps). Stopping the process (SIGSTOP/SIGCONT, kill) at any moment is harmless: nothing
depends on wall time except when a checkpoint is written.

--export writes the weights as float32 .npy files plus manifest.json for tiny/export-gguf.ts. RoPE is trained in
llama.cpp's NORM layout (pairs (2i, 2i+1)), so q/k need no permutation for the `llama` architecture.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time

# torch runs its own intra-op threads (--threads); OpenBLAS spawning as many again under each of them
# oversubscribes the cores and spins in sched_yield: measured here 1,380 tokens/s (30 % system time) with
# OpenBLAS's default against 3,100-3,350 with one OpenBLAS thread. Must be set before torch loads OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tasks  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=8)
    p.add_argument("--n-head-kv", type=int, default=2)
    p.add_argument("--n-ff", type=int, default=512)
    p.add_argument("--rope-base", type=float, default=10000.0)
    p.add_argument("--rms-eps", type=float, default=1e-5)
    p.add_argument("--tokens", type=int, default=4096, help="tokens per step (whole examples, packed)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=60)
    p.add_argument("--decay-steps", type=int, default=150)
    p.add_argument("--wd", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda; checkpoints are saved on the CPU either way")
    p.add_argument("--ckpt-every-s", type=float, default=180.0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--export", default=None, help="write the checkpoint's weights (npy + manifest) to this folder and exit")
    p.add_argument("--bench", type=int, default=0, help="time this many steps and exit (no checkpoint)")
    p.add_argument("--pad", type=int, default=None,
                   help="1: batch the step's examples as padded rows (one causal attention call per layer; the GPU "
                        "path), 0: one packed stream, attention per example (the CPU path); default 1 on cuda, else 0. "
                        "Both see the same examples per step and compute the same loss")
    p.add_argument("--workers", type=int, default=0, help="data-loader processes building batches ahead (0: inline)")
    p.add_argument("--bf16", type=int, default=None, help="bf16 autocast (default 1 on cuda, else 0)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------------------
# Model


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(T, hd, base):
    inv = base ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cos(ang).float(), torch.sin(ang).float()


def apply_rope(x, cos, sin):
    # x: (..., T, hd), cos/sin: (T, hd/2); llama.cpp NORM style: rotate pairs (x[2i], x[2i+1]) by pos * base^(-2i/hd)
    x0 = x[..., 0::2]
    x1 = x[..., 1::2]
    c, s = cos, sin
    return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)


class Block(nn.Module):
    def __init__(self, a):
        super().__init__()
        d, h, kv = a.n_embd, a.n_head, a.n_head_kv
        self.h, self.kv, self.hd = h, kv, d // h
        self.attn_norm = RMSNorm(d, a.rms_eps)
        self.wq = nn.Linear(d, h * self.hd, bias=False)
        self.wk = nn.Linear(d, kv * self.hd, bias=False)
        self.wv = nn.Linear(d, kv * self.hd, bias=False)
        self.wo = nn.Linear(h * self.hd, d, bias=False)
        self.ffn_norm = RMSNorm(d, a.rms_eps)
        self.w_gate = nn.Linear(d, a.n_ff, bias=False)
        self.w_up = nn.Linear(d, a.n_ff, bias=False)
        self.w_down = nn.Linear(a.n_ff, d, bias=False)

    def forward(self, x, cos, sin, segs):
        # x: (T, d), one packed stream; attention only inside each segment (one example), causal
        T = x.shape[0]
        y = self.attn_norm(x)
        q = self.wq(y).view(T, self.h, self.hd).transpose(0, 1)
        k = self.wk(y).view(T, self.kv, self.hd).transpose(0, 1)
        v = self.wv(y).view(T, self.kv, self.hd).transpose(0, 1)
        g = self.h // self.kv
        outs = []
        for s, e in segs:
            L = e - s
            qs = apply_rope(q[:, s:e], cos[:L], sin[:L]).view(self.kv, g, L, self.hd)
            ks = apply_rope(k[:, s:e], cos[:L], sin[:L])[:, None]
            # GQA as llama.cpp: query head i uses KV head i // g
            att = torch.matmul(qs, ks.transpose(-1, -2)) * (1.0 / math.sqrt(self.hd))
            att = att + self.causal(L, x.device)
            att = torch.softmax(att, dim=-1)
            outs.append(torch.matmul(att, v[:, s:e][:, None]).reshape(self.h, L, self.hd))
        o = torch.cat(outs, dim=1).transpose(0, 1).reshape(T, -1)
        x = x + self.wo(o)
        y = self.ffn_norm(x)
        return x + self.w_down(F.silu(self.w_gate(y)) * self.w_up(y))

    def forward_padded(self, x, cos, sin):
        # x: (B, L, d), one example per row, padding after its end; causal attention never sees the padding
        B, L, _ = x.shape
        y = self.attn_norm(x)
        q = apply_rope(self.wq(y).view(B, L, self.h, self.hd).transpose(1, 2), cos[:L], sin[:L])
        k = apply_rope(self.wk(y).view(B, L, self.kv, self.hd).transpose(1, 2), cos[:L], sin[:L])
        v = self.wv(y).view(B, L, self.kv, self.hd).transpose(1, 2)
        g = self.h // self.kv
        # GQA as llama.cpp: query head i uses KV head i // g
        k = k.repeat_interleave(g, dim=1)
        v = v.repeat_interleave(g, dim=1)
        if hasattr(F, "scaled_dot_product_attention"):
            # under autocast the RoPE product is float32 while v is bf16: one dtype for the fused kernel
            o = F.scaled_dot_product_attention(q.to(v.dtype), k.to(v.dtype), v, is_causal=True)
        else:  # torch < 2.0 (Debian's)
            att = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.hd)) + self.causal(L, x.device)
            o = torch.matmul(torch.softmax(att, dim=-1), v)
        x = x + self.wo(o.transpose(1, 2).reshape(B, L, -1))
        y = self.ffn_norm(x)
        return x + self.w_down(F.silu(self.w_gate(y)) * self.w_up(y))

    _mask = None

    @classmethod
    def causal(cls, L, device):
        if cls._mask is None or cls._mask.shape[0] < L or cls._mask.device != device:
            n = max(L, 2048)
            cls._mask = torch.full((n, n), float("-inf"), device=device).triu(1)
        return cls._mask[:L, :L]


class Model(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.a = a
        self.tok = nn.Embedding(tasks.N_VOCAB, a.n_embd)
        self.blocks = nn.ModuleList(Block(a) for _ in range(a.n_layer))
        self.norm = RMSNorm(a.n_embd, a.rms_eps)
        self.out = nn.Linear(a.n_embd, tasks.N_VOCAB, bias=False)
        hd = a.n_embd // a.n_head
        cos, sin = rope_tables(2048, hd, a.rope_base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        for n, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02
                if n.endswith("wo.weight") or n.endswith("w_down.weight"):
                    std = 0.02 / math.sqrt(2 * a.n_layer)
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx, segs):
        if segs is None:  # padded rows (B, L)
            x = self.tok(idx)
            for b in self.blocks:
                x = b.forward_padded(x, self.cos, self.sin)
            return self.out(self.norm(x))
        x = self.tok(idx)
        for b in self.blocks:
            x = b(x, self.cos, self.sin, segs)
        return self.out(self.norm(x))


# ----------------------------------------------------------------------------------------------------------
# Data: whole examples packed into one stream; attention stays inside each example


def make_batch(a, step):
    """Whole examples packed into one stream of at most a.tokens tokens; targets only on completion tokens."""
    rng = random.Random(f"train:{a.seed}:{step}")
    toks_all: list[int] = []
    tgt_all: list[int] = []
    segs = []
    while True:
        task = rng.choice(tasks.TASKS)
        ex = tasks.example(task, rng.randrange(1 << 40))  # test seeds are 9.0e6..9.3e6: never drawn in practice
        toks, start = tasks.example_tokens(ex)
        if len(toks_all) + len(toks) > a.tokens:
            if not toks_all:
                continue
            break
        s = len(toks_all)
        toks_all += toks
        # position i predicts token i+1, only for completion tokens
        tgt_all += [-100] * (start - 1) + toks[start:] + [-100]
        segs.append((s, s + len(toks)))
    return torch.tensor(toks_all), torch.tensor(tgt_all), segs


def pad_batch(idx, tgt, segs):
    """The packed stream of make_batch as padded rows: (B, L) tokens and targets (-100 on the padding)."""
    L = max(e - s for s, e in segs)
    B = len(segs)
    pi = torch.zeros((B, L), dtype=idx.dtype)
    pt = torch.full((B, L), -100, dtype=tgt.dtype)
    for r, (s, e) in enumerate(segs):
        pi[r, :e - s] = idx[s:e]
        pt[r, :e - s] = tgt[s:e]
    return pi, pt


class StepBatches(torch.utils.data.Dataset):
    """Batches by step index, so that data-loader processes build them ahead in order."""

    def __init__(self, a, first, last):
        self.a, self.first, self.n = a, first, max(0, last - first)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        idx, tgt, segs = make_batch(self.a, self.first + i)
        ntok = idx.shape[0]
        if self.a.pad:
            idx, tgt = pad_batch(idx, tgt, segs)
            segs = None
        return idx, tgt, segs, ntok


def _worker_init(_):
    # a timeout's SIGTERM reaches the whole process group: the workers ignore it, the main process checkpoints
    import signal
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def lr_at(a, step):
    """Warmup, then constant, then a linear decay to 10% over the last --decay-steps steps (WSD). Until the decay
    starts the schedule does not depend on --steps, so a run may be lengthened or shortened on resume and is still
    exactly the run that the final --steps describes."""
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    d0 = a.steps - a.decay_steps
    if step < d0:
        return a.lr
    return a.lr * (0.1 + 0.9 * (a.steps - step) / a.decay_steps)


def make_optimizer(model, a):
    """AdamW (0.9, 0.95), weight decay on the matrices only."""
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=a.lr, betas=(0.9, 0.95), eps=1e-8)


def save_ckpt(path, model, opt, step, a):
    tmp = path + ".tmp"
    cpu = lambda t: t.cpu() if torch.is_tensor(t) else t  # noqa: E731
    osd = opt.state_dict()
    osd = {"state": {k: {n: cpu(v) for n, v in st.items()} for k, st in osd["state"].items()}, "param_groups": osd["param_groups"]}
    torch.save({"model": {k: v.cpu() for k, v in model.state_dict().items()}, "opt": osd, "step": step, "args": vars(a)}, tmp)
    os.replace(tmp, path)


def export(model, a, out):
    import numpy as np

    os.makedirs(out, exist_ok=True)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    names = {"tok.weight": "token_embd.weight", "norm.weight": "output_norm.weight", "out.weight": "output.weight"}
    per = {"attn_norm.weight": "attn_norm.weight", "wq.weight": "attn_q.weight", "wk.weight": "attn_k.weight",
           "wv.weight": "attn_v.weight", "wo.weight": "attn_output.weight", "ffn_norm.weight": "ffn_norm.weight",
           "w_gate.weight": "ffn_gate.weight", "w_up.weight": "ffn_up.weight", "w_down.weight": "ffn_down.weight"}
    tensors = []
    for k, v in sd.items():
        if k.startswith("blocks."):
            _, il, rest = k.split(".", 2)
            name = f"blk.{il}.{per[rest]}"
        else:
            name = names[k]
        fn = name + ".npy"
        np.save(os.path.join(out, fn), np.ascontiguousarray(v.astype(np.float32)))
        tensors.append({"name": name, "file": fn, "shape": list(v.shape)})
    manifest = {
        "arch": "llama",
        "n_embd": a.n_embd, "n_layer": a.n_layer, "n_head": a.n_head, "n_head_kv": a.n_head_kv, "n_ff": a.n_ff,
        "head_dim": a.n_embd // a.n_head, "rope_base": a.rope_base, "rms_eps": a.rms_eps, "n_ctx_train": 2048,
        "vocab": {"tokens": tasks.TOKENS, "types": tasks.TOKEN_TYPES, "scores": tasks.SCORES, "bos": tasks.BOS,
                  "eos": tasks.IM_END, "unk": tasks.UNK, "chat_template": tasks.CHAT_TEMPLATE},
        "tensors": tensors,
        "params": int(sum(p.numel() for p in model.parameters())),
        "train": {k: v for k, v in vars(a).items() if k not in ("export", "bench")},
    }
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"exported {len(tensors)} tensors to {out}")


def main(argv=None):
    a = parse_args(argv)
    if a.pad is None:
        a.pad = 1 if a.device.startswith("cuda") else 0
    if a.bf16 is None:
        a.bf16 = 1 if a.device.startswith("cuda") else 0
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    os.makedirs(a.out, exist_ok=True)
    ckpt = os.path.join(a.out, "ckpt.pt")
    if a.export:
        # shape and training arguments come from the checkpoint, not from the command line
        if not os.path.exists(ckpt):
            raise SystemExit(f"--export: no checkpoint at {ckpt}")
        saved = torch.load(ckpt, map_location="cpu")["args"]
        a = argparse.Namespace(**{**vars(a), **{k: v for k, v in saved.items() if k not in ("out", "export", "bench")}})
        a.device = "cpu"
    model = Model(a).to(a.device if not a.export else "cpu")
    n_params = sum(p.numel() for p in model.parameters())
    opt = make_optimizer(model, a)
    step = 0
    if os.path.exists(ckpt):
        st = torch.load(ckpt, map_location="cpu")
        model.load_state_dict(st["model"])
        model.to(a.device)
        opt.load_state_dict(st["opt"])
        step = st["step"]
        print(f"resumed from {ckpt} at step {step} (steps {a.steps}, decay from {a.steps - a.decay_steps})", flush=True)
        if step > a.steps - a.decay_steps and st["args"].get("steps") != a.steps:
            print("warning: --steps changed after the decay began; this run is not reproducible by one command", flush=True)
    if a.export:
        export(model, a, a.export)
        return
    print(f"params {n_params} ({n_params / 1e6:.2f} M), vocab {tasks.N_VOCAB}, steps {a.steps}, tokens/step {a.tokens}", flush=True)
    model.train()
    # SIGTERM (a timeout, a GPU lease ending): finish the step, write the checkpoint, exit
    import signal
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    t_last_ckpt = time.time()
    t0 = time.time()
    tok_acc = 0
    loss_acc = 0.0
    n_acc = 0
    tw = time.time()
    bench_start = step
    batches = StepBatches(a, step, a.steps)
    loader = iter(torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=a.workers, worker_init_fn=_worker_init,
                                              prefetch_factor=8 if a.workers else None)) if a.workers else None
    use_cuda = a.device.startswith("cuda")
    while step < a.steps:
        idx, tgt, segs, ntok = next(loader) if loader else batches[step - bench_start]
        idx, tgt = idx.to(a.device, non_blocking=True), tgt.to(a.device, non_blocking=True)
        for g in opt.param_groups:
            g["lr"] = lr_at(a, step)
        with torch.autocast("cuda" if use_cuda else "cpu", dtype=torch.bfloat16, enabled=bool(a.bf16)):
            logits = model(idx, segs)
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), tgt.view(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tok_acc += int(ntok)
        loss_acc += loss.detach()
        n_acc += 1
        if step % a.log_every == 0 or step == a.steps:
            dt = time.time() - tw
            print(f"step {step} loss {float(loss_acc) / n_acc:.4f} lr {lr_at(a, step - 1):.2e} tok/s {tok_acc / max(dt, 1e-9):.0f} "
                  f"elapsed {time.time() - t0:.0f}s", flush=True)
            tok_acc, loss_acc, n_acc, tw = 0, 0.0, 0, time.time()
        if step == a.steps - a.decay_steps:
            # the last checkpoint before the decay: a longer run can resume from it with a larger --steps
            save_ckpt(os.path.join(a.out, f"ckpt-stable-{step}.pt"), model, opt, step, a)
        if a.bench and step - bench_start >= a.bench:
            return
        if time.time() - t_last_ckpt > a.ckpt_every_s or step == a.steps or stop:
            save_ckpt(ckpt, model, opt, step, a)
            t_last_ckpt = time.time()
        if stop:
            print(f"SIGTERM: checkpoint written at step {step}", flush=True)
            return
    print("done", flush=True)


if __name__ == "__main__":
    main()
