"""GPT (Radford et al. 2018, 2019): a stack of causal Transformer blocks trained to predict the next token.

    ids (B, T) -> token embedding (+ learned positions) -> [x + attn(norm(x)), then x + mlp(norm(x))] x n_layer
               -> final norm -> logits (B, T, V) = hidden @ token_embedding^T   (the output layer is the embedding)

It is Stage 4's decoder without the encoder and the cross-attention: each position reads only itself and the positions
before it (the causal mask), so one forward pass over a text of T tokens gives T next-token predictions to learn from.

The defaults are GPT-2's, layer for layer and name for name (`wte`, `h[i].attn.c_attn`, ...): `to_hf_gpt2` copies the
weights into `transformers`' GPT2LMHeadModel and the tests check that both give the same logits. Three switches give
the choices of later models (LLaMA and most open models since 2023):
    pos="rope"      rotary positions (Su et al. 2021): q and k are rotated by angles proportional to their position, so
                    q.k depends only on how far apart two tokens are; there is no position table.
    norm="rmsnorm"  RMSNorm (Zhang & Sennrich 2019): divide by the root mean square; no mean subtraction, no bias.
    mlp="swiglu"    SwiGLU (Shazeer 2020): (silu(x W_gate) * x W_up) W_down, an MLP with a learned gate.

Attention has two paths that compute the same thing (tested): attn="manual" writes out the mask, softmax and dropout to
be read; attn="sdpa" (the default) calls F.scaled_dot_product_attention, which fuses them into one kernel.

Generation keeps a KV cache: the keys and values of every token seen so far, per layer, so each new token costs one row
of attention instead of a forward pass over the whole text (see `GPT.generate_stream` for what happens at block_size).

`GPTClassifier` puts a linear head on the body's last hidden state: the model that finetune.py trains on SST-2.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab_size: int = 50257           # tokens the model reads and predicts (GPT-2's byte-level BPE: 50257)
    block_size: int = 1024            # context: the most tokens the model sees at once (positions 0 .. block_size-1)
    n_layer: int = 12                 # Transformer blocks
    n_head: int = 12                  # attention heads per block; head size = n_embd / n_head
    n_embd: int = 768                 # width of the residual stream
    dropout: float = 0.0              # on embeddings, attention weights and residual branches (0 for pre-training)
    bias: bool = True                 # biases in Linear layers and LayerNorms (GPT-2: True; most newer models: False)
    pos: str = "learned"              # "learned" position table (GPT-2) or "rope" rotary positions
    norm: str = "layernorm"           # "layernorm" (GPT-2) or "rmsnorm"
    mlp: str = "gelu"                 # "gelu" MLP 4x wide (GPT-2) or "swiglu" gated MLP
    attn: str = "sdpa"                # "sdpa" fused kernel or "manual" written-out attention; same results
    rope_base: float = 10000.0        # RoPE: pair i turns by base^(-2i/head_size) radians per position
    layer_norm_epsilon: float = 1e-5  # added to the variance in LayerNorm / RMSNorm

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        choices = {"pos": ("learned", "rope"), "norm": ("layernorm", "rmsnorm"), "mlp": ("gelu", "swiglu"),
                   "attn": ("sdpa", "manual")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be {' or '.join(allowed)}, got {getattr(self, name)!r}")
        if self.pos == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"rope rotates pairs of dimensions: head size {self.n_embd // self.n_head} must be even")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * gain. LayerNorm without the mean subtraction and the bias: as good in practice, and
    cheaper (Zhang & Sennrich 2019). Same result as nn.RMSNorm (tested)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def make_norm(cfg: GPTConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.n_embd, cfg.layer_norm_epsilon)
    return nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon, bias=cfg.bias)


def rope_tables(block_size: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the angle p * base^(-2i/D), for every position p and dimension pair i -> two (block_size, D).
    Pair 0 turns by one radian per position, the last pair about 1/base: fast pairs tell near tokens apart, slow pairs
    far ones (the same frequencies as Stage 4's sinusoidal positions)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (D/2,)
    angles = torch.outer(torch.arange(block_size, dtype=torch.float64), inv_freq)        # (block_size, D/2)
    angles = torch.cat([angles, angles], dim=-1)                                        # (block_size, D)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate every pair (x_i, x_{i+D/2}) of x (B, H, T, D) by its angle, cos and sin (T, D). Rotating q and k makes
    q_m . k_n depend on m - n only. The pairs are the two halves of the head (the GPT-NeoX / Hugging Face LLaMA layout)
    rather than neighbours (the paper): the same rotation on permuted dimensions, and two slices instead of a strided
    view."""
    x1, x2 = x.chunk(2, dim=-1)                     # 2 x (B, H, T, D/2)
    rotated = torch.cat([-x2, x1], dim=-1)          # (B, H, T, D): each pair turned by 90 degrees
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class KVCache:
    """The keys and values of the positions seen so far, per layer, in buffers of max_len (= block_size) positions.
    Filled in place: a step writes one new position and reads all earlier ones, no concatenation and no copy."""

    def __init__(self, n_layer: int, max_len: int):
        self.max_len, self.pos = max_len, 0   # pos: how many positions are filled (the model advances it)
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v (B, H, T, D) of the new positions -> keys and values of all positions so far, 2 x (B, H, pos+T, D)."""
        if self.keys[layer] is None:  # allocated on first use: batch size, device and dtype (autocast) from k
            B, H, _, D = k.shape
            self.keys[layer] = k.new_empty(B, H, self.max_len, D)
            self.values[layer] = v.new_empty(B, H, self.max_len, D)
        end = self.pos + k.shape[2]
        self.keys[layer][:, :, self.pos:end] = k
        self.values[layer][:, :, self.pos:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep the cached rows `rows` (B',) in that order, repeats allowed: beam search copies a prompt's cache to
        every beam, then makes each kept beam carry on from its parent's keys and values."""
        self.keys = [None if k is None else k.index_select(0, rows) for k in self.keys]
        self.values = [None if v is None else v.index_select(0, rows) for v in self.values]


def causal_mask(T: int, S: int, device=None) -> torch.Tensor:
    """(T, S) True where query i may look at key j. The T queries are the last T of the S positions (S > T when
    earlier keys come from the cache), so query i sits at position S-T+i and sees keys j <= S-T+i."""
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(S - T)


class CausalSelfAttention(nn.Module):
    """n_head attention heads in parallel; each position attends to itself and the positions before it."""

    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.layer, self.n_head, self.head_dim = layer, cfg.n_head, cfg.n_embd // cfg.n_head
        self.manual, self.dropout = cfg.attn == "manual", cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k and v of all heads in one matmul
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)      # mixes the heads' outputs
        self.attn_dropout = nn.Dropout(cfg.dropout)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, rope=None, cache: KVCache | None = None, mask: torch.Tensor | None = None):
        """x (B, T, C); rope: (cos, sin) of these T positions or None; mask: None (causal), or (B, 1, T, S), True
        where a query may look at a key (batched generation: padding and other rows' lengths) -> (B, T, C)."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)                                                  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))  # 3 x (B, H, T, D)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)                          # 2 x (B, H, S, D), S = earlier + T
        S = k.shape[2]
        allowed = causal_mask(T, S, x.device) if mask is None else mask[..., :S]
        if self.manual:
            att = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)      # (B, H, T, S): every query . every key
            att = att.masked_fill(~allowed, float("-inf"))                 # no looking ahead (nor at padding)
            att = self.attn_dropout(att.softmax(dim=-1))                   # each row sums to 1 over the keys
            y = att @ v                                                    # (B, H, T, D): weighted mean of values
        elif mask is not None:  # batched generation: the caller's mask says what each row may see
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        else:  # the same in one fused kernel; is_causal assumes S == T, a cached step with T > 1 needs the mask
            causal = None if S == T or T == 1 else allowed
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal, is_causal=S == T,
                                               dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)               # (B, T, H, D) -> (B, T, C): heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """The per-position feed-forward network, where attention only mixes positions.

    gelu: c_proj(gelu(c_fc x)), 4x wide (GPT-2). GELU is its tanh approximation, as GPT-2 was trained with (Hugging
    Face's "gelu_new"); the exact erf GELU differs by up to ~1e-3, which would break the 1e-5 parity with GPT-2.
    swiglu: c_proj(silu(gate) * up), gate and up from one fused c_fc. The hidden width is 8/3 x n_embd rounded up to a
    multiple of 64 (LLaMA), so its three matrices hold as many weights as the two of the 4x MLP (exactly when n_embd
    is a multiple of 24, e.g. 384 or 768; a few % more otherwise, and 1.5x for tiny widths like 32)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        hidden = 64 * math.ceil(8 * cfg.n_embd / 3 / 64) if self.swiglu else 4 * cfg.n_embd
        self.c_fc = nn.Linear(cfg.n_embd, 2 * hidden if self.swiglu else hidden, bias=cfg.bias)
        self.c_proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        if self.swiglu:
            gate, up = self.c_fc(x).chunk(2, dim=-1)              # 2 x (B, T, hidden)
            h = F.silu(gate) * up                                 # the gate decides how much of each unit passes
        else:
            h = F.gelu(self.c_fc(x), approximate="tanh")          # (B, T, 4C)
        return self.dropout(self.c_proj(h))                       # (B, T, C)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x)). The residual stream itself is never
    normalised, so gradients reach the first blocks unchanged; one final norm comes after the last block."""

    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.ln_1, self.attn = make_norm(cfg), CausalSelfAttention(cfg, layer)
        self.ln_2, self.mlp = make_norm(cfg), MLP(cfg)

    def forward(self, x, rope=None, cache=None, mask=None):
        x = x + self.attn(self.ln_1(x), rope, cache, mask)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)       # token embedding, also the output layer
        if cfg.pos == "learned":
            self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)   # one learned vector per position
        else:  # rotary angles are fixed: buffers, not saved in checkpoints (rebuilt from the config)
            cos, sin = rope_tables(cfg.block_size, cfg.n_embd // cfg.n_head, cfg.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied (Press & Wolf 2017): one matrix reads tokens, and scores them
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # the last layer of each residual branch (GPT-2): every block adds two
                # branches to the stream; 1/sqrt(2 n_layer) keeps its variance from growing with depth
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """GPT-2: every matrix N(0, 0.02), biases 0 (norms keep their gain 1 and bias 0)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None, positions: torch.Tensor | None = None,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
        """idx (B, T) -> the final hidden states (B, T, C), after the last norm: what the output layer reads, and what
        a classification head reads when fine-tuning (the last real token's state has seen the whole text; with
        right padding the pads come after it and, attention being causal, change nothing there).
        With a cache, idx holds only the new tokens: their positions start where the cache stops.
        Batched generation (batching.py) gives each row its own positions (B, T) and a mask (B, 1, T, S): rows that
        are left-padded, or at different lengths, each see only their own tokens, at their own positions."""
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if positions is None:
            if start + T > self.cfg.block_size:
                raise ValueError(f"{start + T} positions do not fit in block_size {self.cfg.block_size}: crop the "
                                 f"input to its last {self.cfg.block_size} tokens")
            positions = torch.arange(start, start + T, device=idx.device)             # (T,), the same for every row
        x, rope = self.wte(idx), None                                              # (B, T, C)
        if self.cfg.pos == "learned":
            x = x + self.wpe(positions)                                            # (T, C) or (B, T, C)
        else:
            cos, sin = self.rope_cos[positions], self.rope_sin[positions]          # (T, D), or (B, T, D) per row
            rope = (cos, sin) if positions.dim() == 1 else (cos[:, None], sin[:, None])   # (B, 1, T, D): per head
        x = self.drop(x)
        for block in self.h:
            x = block(x, rope, cache, mask)
        if cache is not None:
            cache.pos += T
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None):
        """idx (B, T) -> logits (B, T, V), and the mean cross-entropy against targets (B, T), or None.
        targets[:, t] is the token that follows idx[:, t] (the same text shifted left by one; unlike Hugging Face's
        `labels`, which the model shifts itself). Targets equal to -100 (PyTorch's and Hugging Face's ignore_index)
        are skipped: padding, or a prompt that is not to be learned."""
        logits = self.lm_head(self.hidden_states(idx, cache))                     # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    @torch.no_grad()
    def generate_stream(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                        top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
                        use_cache: bool = True, generator: torch.Generator | None = None):
        """After the prompt idx (B, T), yield max_new_tokens token ids (B,), one at a time (to print them as they
        come). Sampling as in `sample_next`; temperature=0 is greedy. Call model.eval() first (no dropout).

        With use_cache, the prompt fills a KV cache in one pass and every later step feeds only the newest token.
        The model sees at most block_size tokens: once the text is longer, it reads the last block_size tokens at
        positions 0 .. block_size-1, so every cached key (made at its old position, having seen older tokens) is
        stale. From then on each step recomputes the last block_size tokens, as use_cache=False does from the start:
        both paths always read the same window and give the same tokens, and the cache only helps up to block_size."""
        block = self.cfg.block_size
        cache = KVCache(self.cfg.n_layer, block) if use_cache else None
        fresh = idx  # the tokens the cache has not seen yet
        for _ in range(max_new_tokens):
            if cache is not None and idx.shape[1] > block:
                cache = None  # past the context: the cached keys are stale (see above), free them
            if cache is not None:
                hidden = self.hidden_states(fresh, cache)                 # (B, len(fresh), C)
            else:
                hidden = self.hidden_states(idx[:, -block:])              # (B, min(T, block), C)
            logits = self.lm_head(hidden[:, -1])                          # (B, V): only the last position is needed
            next_id = sample_next(logits, idx, temperature, top_k, top_p, repetition_penalty, generator)  # (B,)
            idx = torch.cat([idx, next_id[:, None]], dim=1)
            fresh = next_id[:, None]
            yield next_id

    def generate(self, idx: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
        """The prompt (B, T) followed by max_new_tokens generated tokens -> (B, T + max_new_tokens). Same arguments
        as `generate_stream`."""
        new = list(self.generate_stream(idx, max_new_tokens, **kwargs))
        return torch.cat([idx, torch.stack(new, dim=1)], dim=1) if new else idx

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters, the tied embedding counted once. non_embedding leaves out the position table, as GPT-2's sizes
        are reported; the token table stays, since it is also the output layer."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding and self.cfg.pos == "learned" else n

    def configure_optimizer(self, weight_decay: float, lr: float, betas=(0.9, 0.95), device_type: str = "cpu"):
        """AdamW with weight decay on the matrices (Linear weights, embeddings) only: decaying biases and norm gains
        towards 0 only hurts, they do not make the function more complex. Fused kernel on CUDA."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=device_type == "cuda")



class GPTClassifier(nn.Module):
    """A GPT body and a linear head on the hidden state of each sentence's last real token (finetune.py trains it).

    With causal attention the last token is the only position that has seen the whole sentence; Radford et al. 2018 put
    their classifier on the last token in the same way."""

    def __init__(self, gpt: GPT, n_classes: int = 2):
        super().__init__()
        self.gpt = gpt
        self.head = nn.Linear(gpt.cfg.n_embd, n_classes)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids (B, T), right-padded; lengths (B,) -> logits (B, n_classes). The pads come after the last real token,
        and attention is causal, so they change nothing in its hidden state."""
        hidden = self.gpt.hidden_states(ids)                                  # (B, T, C)
        last = hidden[torch.arange(ids.shape[0], device=ids.device), lengths - 1]  # (B, C)
        return self.head(last)                                                # (B, n_classes)


def sample_next(logits: torch.Tensor, idx: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, repetition_penalty: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, V) for the next token, idx (B, T) the text so far -> next token ids (B,).

    repetition_penalty > 1 makes the tokens already in the text less likely (CTRL, Keskar et al. 2019: a positive
    logit is divided by it, a negative one multiplied). temperature 0 is greedy (argmax); otherwise the logits are
    divided by the temperature, only the top_k most likely tokens and the smallest set whose probability reaches
    top_p (nucleus sampling, Holtzman et al. 2020) are kept, and the token is drawn from what is left."""
    if temperature < 0 or (top_p is not None and not 0 < top_p <= 1) or (top_k is not None and top_k < 1):
        raise ValueError(f"need temperature >= 0, 0 < top_p <= 1, top_k >= 1; got {temperature}, {top_p}, {top_k}")
    logits = logits.float()
    if repetition_penalty != 1.0:
        seen = logits.gather(1, idx)                                                      # (B, T)
        logits = logits.scatter(1, idx, torch.where(seen > 0, seen / repetition_penalty, seen * repetition_penalty))
    if temperature == 0:
        return logits.argmax(dim=-1)
    return torch.multinomial(next_token_probs(logits, temperature, top_k, top_p), 1, generator=generator).squeeze(1)


def next_token_probs(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                     top_p: float | None = None) -> torch.Tensor:
    """logits (B, V) -> the distribution sample_next draws from (B, V), for temperature > 0: the logits divided by
    the temperature, then only the top_k most likely tokens and the smallest set reaching top_p kept."""
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]            # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = logits.sort(dim=-1, descending=True)                       # (B, V)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p  # the more likely tokens before this one already reach top_p
        logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits.softmax(dim=-1)


# GPT-2's own code (TensorFlow, then Hugging Face's Conv1D) stores these matrices as (in, out); nn.Linear as (out, in).
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def hf_gpt2_name(name: str) -> str:
    return name if name.startswith("lm_head") else "transformer." + name  # HF nests all but the head in .transformer


def to_hf_gpt2(model: GPT) -> dict:
    """Our weights as a state dict for a `transformers` GPT2LMHeadModel of the same size (its load_state_dict).
    Only GPT-2's own choices have a counterpart there: learned positions, LayerNorm, GELU MLP, biases."""
    c = model.cfg
    if (c.pos, c.norm, c.mlp, c.bias) != ("learned", "layernorm", "gelu", True):
        raise ValueError(f"GPT2LMHeadModel has learned positions, LayerNorm, a GELU MLP and biases; this model has "
                         f"pos={c.pos}, norm={c.norm}, mlp={c.mlp}, bias={c.bias}")
    return {hf_gpt2_name(k): v.t() if k.endswith(CONV1D_WEIGHTS) else v for k, v in model.state_dict().items()}


def from_hf_gpt2(hf_model, **overrides) -> GPT:
    """A GPT holding the weights of a `transformers` GPT2LMHeadModel (pretrained or not). overrides: other config
    fields, e.g. dropout=0.1 or attn="manual"."""
    hc = hf_model.config
    if hc.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"this GPT uses tanh-approximated GELU; the model has {hc.activation_function!r}")
    cfg = GPTConfig(vocab_size=hc.vocab_size, block_size=hc.n_positions, n_layer=hc.n_layer, n_head=hc.n_head,
                    n_embd=hc.n_embd, layer_norm_epsilon=hc.layer_norm_epsilon, **overrides)
    model, theirs = GPT(cfg), hf_model.state_dict()
    model.load_state_dict({k: theirs[hf_gpt2_name(k)].t() if k.endswith(CONV1D_WEIGHTS) else theirs[hf_gpt2_name(k)]
                           for k in model.state_dict()})
    return model
