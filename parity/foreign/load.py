"""Loading a checkpoint into an implementation: its own __init__, our converter, tensors placed by role.

`load_implementation` builds the model with the implementation's own __init__ and config, then loads the
checkpoint through our converter (`nanogpt.hf.hf_to_nanogpt_state_dict`), placed by the roles found in the
built model when the code does not use nanoGPT's names (parity/foreign/roles.py; the mapping is recorded on
every model built, nanogpt.schema.mapping_of), never through the implementation's `from_pretrained`
(the own-loader check runs that): buffers such as causal masks (`attn.bias`) stay as the implementation
built them, every parameter must receive a value, and a tied checkpoint fills both `wte` and `lm_head` of
an untied model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nanogpt.hf import LazyWeights, config_from_hf, hf_to_nanogpt_state_dict, read_hf_config, weight_files
from nanogpt.mismatch import mismatch_clauses
from nanogpt.schema import EMBEDDING, HEAD, mapping_of
from parity.core.errors import ImplementationError
from parity.foreign.impl import Implementation
from parity.foreign.raised import describe_exception
from parity.foreign.roles import RoleMap

# The load summary's heading of the mapping of a port loaded by role.
PLACED_BY_ROLE = "checkpoint tensors placed by role (Hugging Face's name -> the implementation's):"


@dataclass
class LoadReport:
    """What loading a checkpoint into an implementation did."""

    checkpoint: Path
    kept_buffers: list[str]  # buffers left as the implementation built them (causal masks and the like)
    output: str  # what the implementation printed while being built


def _loaded_problems(
    model: nn.Module, sd: dict[str, torch.Tensor], aliases: set[str]
) -> tuple[list[str], list[str]]:
    """(parameters the checkpoint gives no value, checkpoint tensors the model has no parameter for);
    aliases: second names of a tied Parameter that need no entry of their own."""
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)} - aliases
    return sorted(params - set(sd)), sorted(set(sd) - params)


def load_implementation(
    impl: Implementation, checkpoint: Path, dtype: torch.dtype, device: str
) -> tuple[nn.Module, LoadReport]:
    """impl's model built by its own __init__, the checkpoint's weights loaded by our converter, in eval mode.

    nanoGPT-named code gets the converter's state dict as it is; any other faithful port gets it placed by
    the roles found in the built model (parity/foreign/roles.py), whose mapping stays recorded on the model
    (nanogpt.schema.mapping_of). Raises CheckpointError for a bad checkpoint and ImplementationError when the
    implementation cannot be built or some parameter gets no value (the message lists the keys on each side).
    """
    checkpoint = Path(checkpoint)
    config = config_from_hf(read_hf_config(checkpoint))
    weights = LazyWeights(weight_files(checkpoint))
    model, printed = impl.build(config)
    mapping = mapping_of(model)
    by_role = not mapping.identity and isinstance(mapping, RoleMap) and mapping.complete
    # An implementation that pads its vocabulary (50257 -> 50304) gets the checkpoint's rows and zero padding.
    rows = dict(model.named_parameters()).get(mapping.target(EMBEDDING) if by_role else EMBEDDING)
    if rows is not None and rows.dim() == 2 and rows.size(0) > config.vocab_size:
        config = dataclasses.replace(config, vocab_size=rows.size(0), logical_vocab_size=config.vocab_size)
    sd, _ = hf_to_nanogpt_state_dict(weights, config, dtype=dtype, source=str(checkpoint))
    # A tied checkpoint stores the matrix once; an untied implementation gets the same values in both.
    sd.setdefault(HEAD, sd[EMBEDDING])
    aliases: set[str] = set()
    if by_role:
        sd = mapping.place(sd)
        aliases = {mapping.tied_head} if mapping.tied_head and mapping.tied_head not in sd else set()
        if PLACED_BY_ROLE not in impl.notes:  # the load summary shows the mapping once (of the first load)
            impl.notes += [PLACED_BY_ROLE, *(f"  {line}" for line in mapping.mapping_lines())]
    buffers = sorted(n for n, _ in model.named_buffers())
    missing, unexpected = _loaded_problems(model, sd, aliases)
    if missing or unexpected:
        problems = mismatch_clauses(
            missing,
            unexpected,
            missing_label="parameter(s) get no value from the checkpoint",
            unexpected_label="checkpoint tensor(s) have no parameter",
            shown=6,
        )
        names = "GPT-2's tensors placed by role" if by_role else "nanoGPT's names"
        departures = mapping.departures if isinstance(mapping, RoleMap) else []
        if departures:  # the reason every check that needs the weights gives: what is not GPT-2
            shown = "; ".join(departures[:3]) + ("; ..." if len(departures) > 3 else "")
            raise ImplementationError(
                f"{impl.label} departs from GPT-2's architecture ({shown}; see the architecture check), so "
                f"the checkpoint does not load: {problems}"
            )
        raise ImplementationError(f"{impl.label} is not GPT-2's architecture under {names}: {problems}")
    try:
        model.to(dtype=dtype)
        with torch.no_grad():
            # Parameters only: buffers (causal masks) stay as the implementation built them.
            model.load_state_dict(sd, strict=False)
        model.to(device)
    except Exception as e:
        raise ImplementationError(
            f"loading {checkpoint} into {impl.label}: {describe_exception(e, impl.root)}"
        ) from e
    return model.eval(), LoadReport(checkpoint, buffers, printed)
