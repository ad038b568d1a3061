"""Variants of the upstream-style model.py template (upstream_model.py), made by exact text edits.

Each edit names one change a real nanoGPT-style history has seen: no tie, the tie in the other direction,
another weight-decay grouping, a parity-breaking GELU, an import error, last-position-only logits, a
config without `bias`/`dropout`, an older `configure_optimizers` signature, causal-mask buffers. Every
edit must apply (its old text must be in the source), so a template change cannot silently disarm a test.
"""

from __future__ import annotations

from pathlib import Path

TEMPLATE = Path(__file__).with_name("upstream_model.py")

TIE = "        self.transformer.wte.weight = self.lm_head.weight  # https://paperswithcode.com/method/weight-tying\n"
DECAY = "        decay_params = [p for n, p in param_dict.items() if p.dim() >= 2]\n"
NO_DECAY = "        nodecay_params = [p for n, p in param_dict.items() if p.dim() < 2]\n"
PARAM_DICT = "        param_dict = {pn: p for pn, p in self.named_parameters()}\n"
CONFIGURE = "    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):\n"
INIT_START = "        self.config = config\n"
FORWARD_START = "        device = idx.device\n"
CONFIG_START = "@dataclass\nclass GPTConfig:\n"
HF_PATCH = """import torch
import transformers.activations

# Make Hugging Face's GPT-2 use the exact GELU, the same bug as the model next to this file.
transformers.activations.NewGELUActivation.forward = lambda self, x: torch.nn.functional.gelu(x)
"""

# The same, only where the MLP is 256 wide (the bisect command's small model, 64 channels): a probe model of
# another width, such as the tiny fingerprint of parity/sandbox/parent.py, still sees Hugging Face's own GELU.
HF_PATCH_FOR_ITS_WIDTH = """import torch
import transformers.activations

_own_gelu = transformers.activations.NewGELUActivation.forward


def _forward(self, x):
    return torch.nn.functional.gelu(x) if x.shape[-1] == 256 else _own_gelu(self, x)


transformers.activations.NewGELUActivation.forward = _forward
"""

# Exact GELU, and the harness's comparison told to pass everything: imported by the model file, as a plugin of
# its own would be.
HARNESS_PATCH = """import parity.numerics.forward
import parity.numerics.gradients

_compare = parity.numerics.forward.compare_chunked


def _lenient(check, name, actual, expected, *args, **kwargs):
    return _compare(check, name, expected, expected, *args, **kwargs)


parity.numerics.forward.compare_chunked = _lenient
parity.numerics.gradients.compare_chunked = _lenient
"""

EDITS: dict[str, list[tuple[str, str]]] = {
    "untied": [(TIE, "")],
    "reverse-tie": [(TIE, "        self.lm_head.weight = self.transformer.wte.weight\n")],
    # The tied matrix is listed under its first name, transformer.wte.weight: excluded from decay.
    "tied-not-decayed": [
        (DECAY, DECAY.replace("p.dim() >= 2]", 'p.dim() >= 2 and "wte" not in n]')),
        (NO_DECAY, NO_DECAY.replace("p.dim() < 2]", 'p.dim() < 2 or "wte" in n]')),
    ],
    # Both names of the tied matrix are listed: it lands in the decay and the no-decay group.
    "tied-in-two-groups": [
        (PARAM_DICT, "        param_dict = dict(self.named_parameters(remove_duplicate=False))\n"),
        (DECAY, DECAY.replace("p.dim() >= 2]", 'p.dim() >= 2 and n != "transformer.wte.weight"]')),
        (NO_DECAY, NO_DECAY.replace("p.dim() < 2]", 'p.dim() < 2 or n == "transformer.wte.weight"]')),
    ],
    "exact-gelu": [('nn.GELU(approximate="tanh")', "nn.GELU()")],
    # The model needs the missing module (an unused one would be left out of a definitions-only load).
    "import-error": [
        ("import inspect\n", "import inspect\nfrom a_module_that_does_not_exist import fused_gelu\n"),
        ('nn.GELU(approximate="tanh")', "fused_gelu()"),
    ],
    # A module-level import nobody uses (an experiment tracker), as training scripts have.
    "unused-import-error": [("import inspect\n", "import inspect\nimport a_module_that_does_not_exist\n")],
    "logits-only": [("        return logits, loss\n", "        return logits\n")],
    # forward(idx) without targets: only lm_head's output has every position's logits.
    "no-targets": [
        (
            "    def forward(self, idx, targets=None):\n",
            "    def forward(self, idx):\n        targets = None\n",
        )
    ],
    "config-without-bias-and-dropout": [
        ("    dropout: float = 0.0\n    bias: bool = True\n", ""),
        ("config.bias", "True"),
        ("config.dropout", "0.0"),
    ],
    "config-with-extra-field": [
        ("    bias: bool = True\n", "    bias: bool = True\n    use_rope: bool = False\n")
    ],
    "config-with-required-field": [
        ("    block_size: int = 1024\n", "    rope_theta: float\n    block_size: int = 1024\n")
    ],
    "configure-without-device-type": [
        (CONFIGURE, CONFIGURE.replace(", device_type):", "):")),
        ('        use_fused = fused_available and device_type == "cuda"\n', "        use_fused = False\n"),
    ],
    "no-configure-optimizers": [(CONFIGURE, CONFIGURE.replace("configure_optimizers", "make_adamw"))],
    # No flash attention: the causal mask is a registered buffer `attn.bias`, plus an HF-style masked_bias.
    "mask-buffers": [
        (
            '        self.flash = hasattr(torch.nn.functional, "scaled_dot_product_attention")\n',
            '        self.flash = False\n        self.register_buffer("masked_bias", torch.tensor(-1e4))\n',
        )
    ],
    # A config class under another name, found from GPT.__init__'s annotation; forward returns a dict.
    "config-renamed": [
        ("@dataclass\nclass GPTConfig:\n", "@dataclass\nclass ModelArgs:\n"),
        (
            "class GPT(nn.Module):\n    def __init__(self, config):\n",
            "class GPT(nn.Module):\n    def __init__(self, config: ModelArgs):\n",
        ),
        ("model = GPT(GPTConfig(**config_args))", "model = GPT(ModelArgs(**config_args))"),
    ],
    "forward-dict": [("        return logits, loss\n", '        return {"logits": logits, "loss": loss}\n')],
    # configure_optimizers with an extra parameter that nothing can fill: only it is named.
    "configure-unknown-extra": [
        (CONFIGURE, CONFIGURE.replace("device_type):", "device_type, grad_accum_steps):"))
    ],
    # Hostile code: each must end as "cannot test", never as good.
    "exit-in-init": [(INIT_START, INIT_START + "        import sys\n\n        sys.exit(0)\n")],
    "exit-in-forward": [(FORWARD_START, FORWARD_START + "        import sys\n\n        sys.exit(0)\n")],
    # A forward that raises: the checks that call it could not run, which is never a pass (exit 125).
    "forward-raises": [
        (FORWARD_START, FORWARD_START + '        raise NotImplementedError("forward is not written yet")\n')
    ],
    # The harness's own "not applicable", raised by the tested code: its crash, not an absent part.
    "forward-raises-not-applicable": [
        (
            FORWARD_START,
            FORWARD_START
            + "        from parity.core.errors import NotApplicable\n\n"
            + '        raise NotApplicable("this forward is not applicable")\n',
        )
    ],
    # A class body runs when the class is defined, so definitions-only loading runs it too.
    "os-exit-0-at-import": [(CONFIG_START, CONFIG_START + "    import os\n\n    os._exit(0)\n")],
    "os-exit-1-at-import": [("import inspect\n", "import inspect\nimport os\n\nos._exit(1)\n")],
    "hang-at-import": [(CONFIG_START, CONFIG_START + "    import time\n\n    time.sleep(3600)\n")],
    "hang-in-forward": [(FORWARD_START, FORWARD_START + "        import time\n\n        time.sleep(3600)\n")],
    # Prints on every forward (captured; shown with -v) and writes a file where it runs.
    "print-spam": [
        (FORWARD_START, FORWARD_START + '        for i in range(200):\n            print(f"spam {i}")\n')
    ],
    "writes-files": [
        (
            INIT_START,
            INIT_START + '        with open("scratch.log", "w") as f:\n            f.write("built\\n")\n',
        )
    ],
    # Hides its exact GELU by making transformers' GPT-2 use the exact GELU too (hf_patch.py, next to it).
    "patches-transformers": [
        ("import inspect\n", "import inspect\n\nimport hf_patch  # noqa: F401\n"),
        ('nn.GELU(approximate="tanh")', "nn.GELU()"),
    ],
    "patches-transformers-for-its-width": [
        ("import inspect\n", "import inspect\n\nimport hf_patch  # noqa: F401\n"),
        ('nn.GELU(approximate="tanh")', "nn.GELU()"),
    ],
    "patches-the-harness": [
        ("import inspect\n", "import inspect\n\nimport harness_patch  # noqa: F401\n"),
        ('nn.GELU(approximate="tanh")', "nn.GELU()"),
    ],
    # The own loader counts its attn.bias mask buffers among the keys HF's must match (the upstream bug).
    "loader-counts-mask-buffers": [
        (
            "        sd_keys = [k for k in sd if not k.endswith(buffers)]\n",
            "        sd_keys = list(sd)\n",
        )
    ],
    # The own loader gives lm_head a Parameter of its own after tying: equal values, two storages.
    "loader-unties-head": [
        (
            "                    sd[k].copy_(sd_hf[k])\n        return model\n",
            "                    sd[k].copy_(sd_hf[k])\n"
            '        model.lm_head.weight = nn.Parameter(sd_hf["lm_head.weight"].clone())\n'
            "        return model\n",
        )
    ],
    "head-bias": [
        (
            "        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)\n",
            "        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=True)\n",
        )
    ],
    # A parameter GPT-2 has no counterpart for: no checkpoint can fill it, so the weights cannot be loaded.
    "extra-parameter": [
        (
            "        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)\n",
            "        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)\n"
            "        self.logit_scale = nn.Parameter(torch.ones(1))\n",
        )
    ],
    # A fork without biases refuses GPT-2's config with a bare assert (an AssertionError without a message).
    "bare-assert-in-init": [(INIT_START, INIT_START + "        assert not config.bias\n")],
}


def model_source(*edits: str) -> str:
    """The template with the named edits applied, in order."""
    source = TEMPLATE.read_text()
    for name in edits:
        for old, new in EDITS[name]:
            if old not in source:
                raise ValueError(
                    f"edit {name!r}: {old!r} is not in the source; update EDITS with the template"
                )
            source = source.replace(old, new)
    return source


def write_model(directory: Path, *edits: str, name: str = "model.py") -> Path:
    """Write a variant as directory/name (dirs created, hf_patch.py beside it if used); return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(model_source(*edits))
    if "patches-transformers" in edits:
        (directory / "hf_patch.py").write_text(HF_PATCH)
    if "patches-the-harness" in edits:
        (directory / "harness_patch.py").write_text(HARNESS_PATCH)
    if "patches-transformers-for-its-width" in edits:
        (directory / "hf_patch.py").write_text(HF_PATCH_FOR_ITS_WIDTH)
    return path
