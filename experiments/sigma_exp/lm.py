"""A small word-level GPT trained from scratch on the corpus (torch, CPU), with a KV-cached
top-p sampler and a mean-pooled hidden-state embedding (the "model" taps, m = d_model)."""
from __future__ import annotations

import collections
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .corpus import detokenize, tokenize
from .state import atomic_write_json

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


class Vocab:
    def __init__(self, words: list[str]):
        self.itos = SPECIALS + list(words)
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def build(cls, docs: list[str], size: int) -> "Vocab":
        cnt = collections.Counter(t for d in docs for t in tokenize(d))
        # most frequent first, ties alphabetical: deterministic
        words = sorted(cnt, key=lambda w: (-cnt[w], w))[:size]
        return cls(words)

    @classmethod
    def cached(cls, path: Path, docs: list[str], size: int) -> "Vocab":
        """The vocabulary stored at `path` (JSON list of words); built from docs and stored
        on first use, so a resumed run keeps the same ids."""
        path = Path(path)
        if not path.exists():
            atomic_write_json(path, cls.build(docs, size).itos[len(SPECIALS):])
        return cls(json.loads(path.read_text()))

    def encode(self, text: str, max_len: int) -> list[int]:
        ids = [self.stoi.get(t, UNK) for t in tokenize(text)][:max_len]
        return [BOS] + ids + [EOS]

    def decode(self, ids) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i in (PAD, BOS):
                continue
            out.append(self.itos[i])
        return detokenize(out)

    def __len__(self):
        return len(self.itos)


@dataclass
class LMConfig:
    vocab: int
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 3
    ctx: int = 40
    dropout: float = 0.1


class Block(nn.Module):
    def __init__(self, c: LMConfig):
        super().__init__()
        self.h, self.dh = c.n_heads, c.d_model // c.n_heads
        self.ln1 = nn.LayerNorm(c.d_model)
        self.qkv = nn.Linear(c.d_model, 3 * c.d_model)
        self.proj = nn.Linear(c.d_model, c.d_model)
        self.ln2 = nn.LayerNorm(c.d_model)
        self.mlp = nn.Sequential(nn.Linear(c.d_model, 4 * c.d_model), nn.GELU(),
                                 nn.Linear(4 * c.d_model, c.d_model))
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x, cache=None):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.h, self.dh).transpose(1, 2) for z in (q, k, v))
        if cache is not None:
            if cache.get("k") is not None:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
            causal = t > 1
        else:
            causal = True
        p = self.drop.p if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=p)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.mlp(self.ln2(x)))


class GPT(nn.Module):
    def __init__(self, c: LMConfig):
        super().__init__()
        self.c = c
        self.tok = nn.Embedding(c.vocab, c.d_model)
        self.pos = nn.Embedding(c.ctx, c.d_model)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.ln = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.vocab, bias=False)
        self.head.weight = self.tok.weight  # tied
        self.apply(self._init)

    @staticmethod
    def _init(mod):
        if isinstance(mod, (nn.Linear, nn.Embedding)):
            nn.init.normal_(mod.weight, std=0.02)
            if isinstance(mod, nn.Linear) and mod.bias is not None:
                nn.init.zeros_(mod.bias)

    def hidden(self, idx, caches=None, start=0):
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(start, start + t))
        for i, blk in enumerate(self.blocks):
            x = blk(x, None if caches is None else caches[i])
        return self.ln(x)

    def forward(self, idx):
        return self.head(self.hidden(idx))


def pad_batch(seqs: list[list[int]]) -> torch.Tensor:
    L = max(len(s) for s in seqs)
    out = torch.full((len(seqs), L), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(s)
    return out


def train(model: GPT, seqs: list[list[int]], epochs: float, lr: float, batch: int = 64,
          seed: int = 0, warmup: int = 100, log=print, tag: str = "") -> dict:
    """AdamW, linear warm-up then cosine decay to lr/10; token-level cross-entropy
    (padding ignored). Returns the last-epoch mean loss and the wall time."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    n_batches = math.ceil(len(seqs) / batch)
    total = max(1, int(round(epochs * n_batches)))
    model.train()
    t0, step, losses = time.time(), 0, []
    torch.manual_seed(seed)
    while step < total:
        perm = rng.permutation(len(seqs))
        for s in range(0, len(perm), batch):
            if step >= total:
                break
            x = pad_batch([seqs[i] for i in perm[s:s + batch]])
            logits = model(x[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                   ignore_index=PAD)
            cur = lr * min(1.0, (step + 1) / warmup) * (
                0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / total)))
            for pg in opt.param_groups:
                pg["lr"] = cur
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            step += 1
            if step % 100 == 0:
                log(f"{tag} step {step}/{total} loss {np.mean(losses[-100:]):.3f} "
                    f"({time.time() - t0:.0f}s)")
    del g
    model.eval()
    last = losses[-n_batches:] if losses else [float("nan")]
    return {"steps": total, "loss": float(np.mean(last)), "seconds": time.time() - t0}


@torch.inference_mode()
def eval_loss(model: GPT, seqs: list[list[int]], batch: int = 256) -> float:
    model.eval()
    tot, cnt = 0.0, 0
    for s in range(0, len(seqs), batch):
        x = pad_batch(seqs[s:s + batch])
        logits = model(x[:, :-1])
        y = x[:, 1:]
        l = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                            ignore_index=PAD, reduction="sum")
        tot += l.item()
        cnt += int((y != PAD).sum())
    return tot / max(cnt, 1)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Same rule as sampling.top_p_mask: keep a token when the mass before it is < p."""
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1, stable=True)
    probs = sorted_logits.softmax(-1)
    before = probs.cumsum(-1) - probs
    drop_sorted = before >= p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


@torch.inference_mode()
def generate(model: GPT, n: int, max_new: int, top_p: float = 0.95, temperature: float = 1.0,
             batch: int = 500, seed: int = 0) -> list[list[int]]:
    """n samples from <bos>, top-p decoding, <unk>/<pad>/<bos> never sampled; stops at
    <eos> or after max_new tokens. Returns the token ids (without <bos>/<eos>).
    Finished rows leave the batch (their KV cache rows are dropped), so the cost follows
    the lengths actually generated."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    out: list[list[int]] = []
    max_new = min(max_new, model.c.ctx - 1)
    for s in range(0, n, batch):
        b = min(batch, n - s)
        caches = [dict() for _ in model.blocks]
        cur = torch.full((b, 1), BOS, dtype=torch.long)
        rows: list[list[int]] = [[] for _ in range(b)]
        alive = torch.arange(b)
        for t in range(max_new):
            h = model.hidden(cur, caches, start=t)[:, -1]
            logits = model.head(h) / temperature
            logits[:, [PAD, BOS, UNK]] = float("-inf")
            logits = top_p_filter(logits, top_p)
            nxt = torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(1)
            ended = nxt == EOS
            for i, tok, e in zip(alive.tolist(), nxt.tolist(), ended.tolist()):
                if not e:
                    rows[i].append(tok)
            keep = ~ended
            if not bool(keep.any()):
                break
            if not bool(keep.all()):
                alive = alive[keep]
                nxt = nxt[keep]
                for c in caches:
                    c["k"], c["v"] = c["k"][keep], c["v"][keep]
            cur = nxt.unsqueeze(1)
        out.extend(rows)
    return out


@torch.inference_mode()
def embed(model: GPT, seqs: list[list[int]], batch: int = 512) -> np.ndarray:
    """Mean over the sequence (<bos> .. <eos>) of the final-layer-norm hidden state."""
    model.eval()
    out = np.zeros((len(seqs), model.c.d_model), dtype=np.float32)
    for s in range(0, len(seqs), batch):
        chunk = [q[: model.c.ctx] for q in seqs[s:s + batch]]
        x = pad_batch(chunk)
        h = model.hidden(x)
        mask = (x != PAD).unsqueeze(-1).to(h.dtype)
        out[s:s + len(chunk)] = ((h * mask).sum(1) / mask.sum(1)).numpy()
    return out


def save(model: GPT, path, extra: dict | None = None) -> None:
    torch.save({"config": asdict(model.c), "state": model.state_dict(), **(extra or {})}, path)


def load(path) -> GPT:
    ck = torch.load(path, map_location="cpu", weights_only=False)
    m = GPT(LMConfig(**ck["config"]))
    m.load_state_dict(ck["state"])
    return m.eval()
