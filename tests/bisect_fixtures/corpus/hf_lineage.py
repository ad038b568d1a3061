"""A GPT-2 in Hugging Face's own lineage (the pytorch-pretrained-BERT era): class `GPT2LMHeadModel`,
Conv1D layers stored (in, out), a head at `lm_head.decoder.weight` tied to `transformer.wte.weight`,
config fields `layer_norm_epsilon`/`n_positions`, and the loss through `forward(..., lm_labels=...)`.

Corpus shape: the nanoGPT names of GPT-2's tensors but Conv1D's layout, so the square `c_proj` weights
load transposed without an error unless their layout is decided by evidence. `GPT`/`GPTConfig` aliases
at the end expose it under nanoGPT's names until class discovery finds `GPT2LMHeadModel` itself.
"""

import math

import torch
import torch.nn as nn
from torch.nn import functional as F


def gelu(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


class Conv1D(nn.Module):
    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.empty(nx, nf).normal_(std=0.02))
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        size_out = x.size()[:-1] + (self.nf,)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(*size_out)


class Attention(nn.Module):
    def __init__(self, nx, n_ctx, config):
        super().__init__()
        self.register_buffer("bias", torch.tril(torch.ones(n_ctx, n_ctx)).view(1, 1, n_ctx, n_ctx))
        self.n_head = config.n_head
        self.split_size = nx
        self.c_attn = Conv1D(nx * 3, nx)
        self.c_proj = Conv1D(nx, nx)

    def split_heads(self, x):
        return x.view(*x.size()[:-1], self.n_head, x.size(-1) // self.n_head).permute(0, 2, 1, 3)

    def forward(self, x):
        q, k, v = (self.split_heads(t) for t in self.c_attn(x).split(self.split_size, dim=2))
        w = q @ k.transpose(-1, -2) / math.sqrt(v.size(-1))
        nd = w.size(-1)
        b = self.bias[:, :, :nd, :nd]
        w = torch.softmax(w * b - 1e4 * (1 - b), dim=-1)
        a = (w @ v).permute(0, 2, 1, 3).contiguous()
        return self.c_proj(a.view(*a.size()[:-2], a.size(-2) * a.size(-1)))


class MLP(nn.Module):
    def __init__(self, n_state, config):
        super().__init__()
        self.c_fc = Conv1D(n_state, config.n_embd)
        self.c_proj = Conv1D(config.n_embd, n_state)

    def forward(self, x):
        return self.c_proj(gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, n_ctx, config):
        super().__init__()
        nx = config.n_embd
        self.ln_1 = nn.LayerNorm(nx, eps=config.layer_norm_epsilon)
        self.attn = Attention(nx, n_ctx, config)
        self.ln_2 = nn.LayerNorm(nx, eps=config.layer_norm_epsilon)
        self.mlp = MLP(4 * nx, config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.h = nn.ModuleList([Block(config.n_ctx, config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    def forward(self, input_ids):
        pos = torch.arange(input_ids.size(-1), device=input_ids.device)
        x = self.wte(input_ids) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.ln_f(x)


class GPT2LMHead(nn.Module):
    def __init__(self, model_embeddings_weights, config):
        super().__init__()
        self.decoder = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.decoder.weight = model_embeddings_weights  # tied

    def forward(self, hidden_state):
        return self.decoder(hidden_state)


class GPT2Config:
    def __init__(
        self,
        vocab_size=50257,
        n_positions=1024,
        n_ctx=1024,
        n_embd=768,
        n_layer=12,
        n_head=12,
        layer_norm_epsilon=1e-5,
    ):
        self.vocab_size = vocab_size
        self.n_positions = n_positions
        self.n_ctx = n_ctx
        self.n_embd = n_embd
        self.n_layer = n_layer
        self.n_head = n_head
        self.layer_norm_epsilon = layer_norm_epsilon


class GPT2LMHeadModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.transformer = GPT2Model(config)
        self.lm_head = GPT2LMHead(self.transformer.wte.weight, config)
        self.apply(self.init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2's scaled init of the residual projections
                p.data.normal_(mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding, Conv1D)):
            module.weight.data.normal_(mean=0.0, std=0.02)
        if isinstance(module, (nn.Linear, Conv1D)) and module.bias is not None:
            module.bias.data.zero_()

    def forward(self, input_ids, lm_labels=None):
        logits = self.lm_head(self.transformer(input_ids))
        if lm_labels is not None:
            shift_logits, shift_labels = logits[..., :-1, :].contiguous(), lm_labels[..., 1:].contiguous()
            return F.cross_entropy(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1))
        return logits


def GPTConfig(block_size, vocab_size, n_layer, n_head, n_embd):  # noqa: N802
    return GPT2Config(vocab_size, block_size, block_size, n_embd, n_layer, n_head)


GPT = GPT2LMHeadModel
