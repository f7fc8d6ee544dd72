"""A small causal language model trained here, for the report's MI column (paper section 2.4.1).

The paper scores MI with GPT-2, which cannot be downloaded offline. This module trains a tiny
GPT (Lightning) on the report's *training* documents only (the concept models' training text),
with a sentencepiece tokenizer trained on the same text, caches it on disk and scores sentences.

Text layout. A document s_1..s_n is the token stream ``<sep> s_1 <sep> s_2 ... <sep> s_n <sep>``
(``<sep>`` plays the role of the paper's newline); training documents are concatenated and cut
into blocks. The scorer follows :class:`eval.metrics.concepts.LogProbScorer`:
``log_prob(prefix, text)`` tokenizes ``text`` on its own and ``prefix`` line by line, each
``"\\n"`` becoming ``<sep>``, so ``mutual_information(lm, preds, contexts, joiner="\\n")`` sees
``s_{n-k} <sep> ... s_{n-1} <sep> ŝ_n`` (conditional) against ``<sep> ŝ_n`` (unconditional).
:meth:`CausalLM.score_after` does the same for many candidate sentences after one prefix,
computing the prefix once (its keys and values are shared), which is what the report uses.

The network is a GPT-2-shaped token model (learned positions, LayerNorm, GELU, tied output), a
stand-in for the paper's scorer, and deliberately not the concept models' transformer
(``lcm/nn/transformer.py``: RMSNorm, RoPE, SwiGLU over concept vectors). It runs on any device
(``train_causal_lm(..., device="cuda")``, ``CausalLM(folder, device)``); the report uses the CPU.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

SEP = 2  # sentencepiece eos id, used as the sentence separator


@dataclass(frozen=True)
class LMConfig:
    """Size and training recipe of the scoring LM.

    Attributes:
        vocab_size: sentencepiece vocabulary (BPE with byte fallback; a soft limit).
        d_model: width.
        n_layers: transformer blocks.
        n_heads: attention heads.
        block: context length in tokens (training blocks and the longest scored prefix+text).
        steps: optimizer steps.
        batch: blocks per step.
        lr: peak learning rate (AdamW, linear warmup then cosine decay to 10%).
        warmup: warmup steps.
        val_fraction: share of the training documents held out for validation perplexity.
        seed: seed of the document split, the initialisation and the data order.
    """

    vocab_size: int = 4000
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    block: int = 256
    steps: int = 300
    batch: int = 16
    lr: float = 3e-3
    warmup: int = 30
    val_fraction: float = 0.05
    seed: int = 0


class _Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ffn = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, h: Tensor, past: tuple[Tensor, Tensor] | None = None):
        """``h`` (B, L, D); ``past``: the prefix's keys and values (1, H, P, D/H), attended by
        every row before its own causal tokens. Returns (h, (k, v) of these tokens)."""
        b, n, d = h.shape
        q, k, v = self.qkv(self.ln1(h)).view(b, n, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, dh)
        if past is None:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            pk, pv = (t.expand(b, -1, -1, -1) for t in past)
            own = torch.ones(n, n, dtype=torch.bool, device=h.device).tril()
            mask = torch.cat([own.new_ones(n, pk.shape[2]), own], 1)
            a = F.scaled_dot_product_attention(
                q, torch.cat([pk, k], 2), torch.cat([pv, v], 2), attn_mask=mask
            )
        h = h + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return h + self.ffn(self.ln2(h)), (k, v)


class TinyGPT(nn.Module):
    """Pre-LN decoder-only transformer with learned positions and a tied output layer."""

    def __init__(self, vocab: int, d: int, layers: int, heads: int, block: int) -> None:
        super().__init__()
        self.block = block
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(block, d)
        self.blocks = nn.ModuleList(_Block(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, ids: Tensor, past: list | None = None, offset: int = 0):
        """Logits (B, L, V) of the next token at every position, and each block's (k, v)."""
        h = self.tok(ids) + self.pos(torch.arange(offset, offset + ids.shape[1], device=ids.device))
        kvs = []
        for i, blk in enumerate(self.blocks):
            h, kv = blk(h, None if past is None else past[i])
            kvs.append(kv)
        return self.ln(h) @ self.tok.weight.T, kvs


class LitLM(L.LightningModule):
    """Next-token cross-entropy on random blocks of the training stream."""

    def __init__(self, cfg: LMConfig, vocab: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = TinyGPT(vocab, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.block)

    def _loss(self, batch: Tensor) -> Tensor:
        logits, _ = self.net(batch[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))

    def training_step(self, batch: Tensor, _: int) -> Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=False)
        return loss

    def validation_step(self, batch: Tensor, _: int) -> Tensor:
        loss = self._loss(batch)
        self.log("val/loss", loss, batch_size=batch.shape[0] * (batch.shape[1] - 1))
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.cfg.lr, weight_decay=0.01)
        warm, total = self.cfg.warmup, self.cfg.steps

        def scale(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            t = min(1.0, (step - warm) / max(1, total - warm))
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, scale)
        return [opt], [{"scheduler": sched, "interval": "step"}]


class _RandomBlocks(torch.utils.data.IterableDataset):
    def __init__(self, stream: Tensor, block: int, seed: int) -> None:
        self.stream, self.block, self.seed = stream, block, seed

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        hi = len(self.stream) - self.block - 1
        while True:
            i = int(torch.randint(0, max(hi, 1), (1,), generator=g))
            yield self.stream[i : i + self.block + 1]


def _blocks(stream: Tensor, block: int) -> Tensor:
    """Consecutive non-overlapping blocks of ``block + 1`` tokens (validation: every token
    scored once, except one per block)."""
    n = (len(stream) - 1) // block
    if n == 0:
        return stream[None]
    return torch.stack([stream[i * block : i * block + block + 1] for i in range(n)])


def text_sha256(documents: list[list[str]]) -> str:
    h = hashlib.sha256()
    for doc in documents:
        for s in doc:
            h.update(s.encode())
            h.update(b"\x00")
        h.update(b"\x01")
    return h.hexdigest()


class CausalLM:
    """A trained :class:`TinyGPT` with its tokenizer: a :class:`LogProbScorer` for MI.

    Args:
        folder: where :func:`train_causal_lm` wrote ``tokenizer.model``, ``lm.pt``, ``info.json``.
        device: where the network runs (``"cpu"``, ``"cuda"``, ...); scores come back as floats.
    """

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu") -> None:
        import sentencepiece as spm

        folder = Path(folder)
        self.info = json.loads((folder / "info.json").read_text())
        cfg = LMConfig(**self.info["config"])
        self.sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
        self.net = TinyGPT(
            self.sp.get_piece_size(), cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.block
        )
        state = torch.load(folder / "lm.pt", map_location="cpu", weights_only=True)
        self.net.load_state_dict(state)
        self.net.eval().to(device)
        self.device = torch.device(device)
        self.block = cfg.block

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_prefix(self, prefix: str) -> list[int]:
        """Lines of ``prefix`` joined by ``<sep>`` (``"\\n"`` alone is ``[<sep>]``)."""
        ids: list[int] = []
        for i, line in enumerate(prefix.split("\n")):
            if i:
                ids.append(SEP)
            ids += self.encode(line) if line else []
        return ids

    @torch.inference_mode()
    def score_after(self, prefix: list[int], texts: list[list[int]]) -> list[float]:
        """Sum of log p of each token list of ``texts`` after the token ids ``prefix`` (cut
        from the left so that prefix + the longest text fit the block)."""
        if not prefix:
            raise ValueError("score_after() needs a non-empty prefix to score the first token")
        longest = max((len(t) for t in texts), default=0)
        if longest >= self.block:
            raise ValueError(f"a text of {longest} tokens exceeds the LM's block {self.block}")
        out = [0.0] * len(texts)
        rows = [i for i, t in enumerate(texts) if t]
        if not rows:
            return out
        prefix = prefix[-(self.block - longest) :]
        logits, past = self.net(torch.tensor([prefix], device=self.device))
        first = logits[0, -1].float().log_softmax(-1)  # predicts each text's first token
        ids = torch.zeros(len(rows), longest, dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, : len(texts[i])] = torch.tensor(texts[i])
        ids = ids.to(self.device)
        lg, _ = self.net(ids, past=past, offset=len(prefix))
        lp = lg.float().log_softmax(-1)
        for r, i in enumerate(rows):
            t = ids[r, : len(texts[i])]
            rest = lp[r, : len(t) - 1].gather(1, t[1:, None]).sum() if len(t) > 1 else 0.0
            out[i] = float(first[t[0]] + rest)
        return out

    def log_prob(self, prefix: str, text: str) -> tuple[float, int]:
        """:class:`eval.metrics.concepts.LogProbScorer`: (sum log p(text | prefix), tokens)."""
        ids = self.encode(text)
        return self.score_after(self.encode_prefix(prefix), [ids])[0], len(ids)


def train_causal_lm(
    documents: list[list[str]],
    folder: str | Path,
    cfg: LMConfig = LMConfig(),
    device: str = "cpu",
) -> CausalLM:
    """Train the tokenizer and the LM on ``documents`` (lists of sentences) and save them in
    ``folder``; a folder whose ``info.json`` records the same text hash and config is reused.
    ``info.json`` holds the sizes, the training seconds and the validation perplexity.
    ``device`` (``"cpu"`` or ``"cuda"``) is where the LM trains and the returned scorer runs."""
    accelerator = torch.device(device).type
    import sentencepiece as spm

    folder = Path(folder)
    sha = text_sha256(documents)
    info_path = folder / "info.json"
    if info_path.exists():
        info = json.loads(info_path.read_text())
        if info.get("text_sha256") == sha and info.get("config") == asdict(cfg):
            return CausalLM(folder, device)
    if not documents or not any(documents):
        raise ValueError("train_causal_lm: no training sentences")
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(documents))
    n_val = max(1, int(round(cfg.val_fraction * len(documents)))) if len(documents) > 1 else 0
    val_docs = [documents[i] for i in sorted(order[:n_val])]
    train_docs = [documents[i] for i in sorted(order[n_val:])]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([s for d in train_docs for s in d]),
        model_prefix=str(folder / "tokenizer"),
        vocab_size=cfg.vocab_size,
        model_type="bpe",
        byte_fallback=True,
        hard_vocab_limit=False,
        pad_id=0, unk_id=1, bos_id=-1, eos_id=SEP,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )  # fmt: skip
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))

    def stream(docs: list[list[str]]) -> Tensor:
        ids: list[int] = []
        for doc in docs:
            ids.append(SEP)
            for s in doc:
                ids += sp.encode(s) + [SEP]
        return torch.tensor(ids, dtype=torch.long)

    train_stream, val_stream = stream(train_docs), stream(val_docs or train_docs[:1])
    t_tok = time.perf_counter() - t0
    torch.manual_seed(cfg.seed)
    module = LitLM(cfg, sp.get_piece_size())
    loader = torch.utils.data.DataLoader(
        _RandomBlocks(train_stream, cfg.block, cfg.seed), batch_size=cfg.batch
    )
    val_loader = torch.utils.data.DataLoader(_blocks(val_stream, cfg.block), batch_size=64)
    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*IterableDataset.*")
    warnings.filterwarnings("ignore", message=".*validation_step.*")
    trainer = L.Trainer(
        max_steps=cfg.steps,
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    t1 = time.perf_counter()
    trainer.fit(module, loader)
    t_fit = time.perf_counter() - t1
    res = L.Trainer(
        accelerator=accelerator, devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False,
    ).validate(module, val_loader, verbose=False)  # fmt: skip
    val_loss = float(res[0]["val/loss"])
    torch.save({k: v.cpu() for k, v in module.net.state_dict().items()}, folder / "lm.pt")
    n_params = sum(p.numel() for p in module.net.parameters())
    info = {
        "config": asdict(cfg),
        "text_sha256": sha,
        "vocab": sp.get_piece_size(),
        "parameters": n_params,
        "train_documents": len(train_docs),
        "train_tokens": int(len(train_stream)),
        "val_documents": len(val_docs),
        "val_tokens": int(len(val_stream)),
        "val_loss": val_loss,
        "val_perplexity": math.exp(val_loss),
        "tokens_seen": cfg.steps * cfg.batch * cfg.block,
        "seconds_tokenizer": round(t_tok, 1),
        "seconds_train": round(t_fit, 1),
        "seconds_total": round(time.perf_counter() - t0, 1),
        "torch_threads": torch.get_num_threads(),
    }
    info_path.write_text(json.dumps(info, indent=2))
    return CausalLM(folder, device)
