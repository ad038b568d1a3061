"""Peak dense FLOP/s of known accelerators, for model FLOPs utilization (MFU).

Numbers are the vendors' dense (no sparsity) tensor-core peaks. MFU against a wrong peak is meaningless,
so an unknown device yields None and callers print "n/a" rather than guessing.
"""

from __future__ import annotations

import torch

# device-name substring -> {dtype: peak FLOP/s}. Order matters: the first matching substring wins, so
# more specific names come first ("H100 PCIe" before "H100").
PEAK_FLOPS: dict[str, dict[torch.dtype, float]] = {
    "H200": {torch.bfloat16: 989e12, torch.float16: 989e12, torch.float32: 67e12},
    "H100 PCIe": {torch.bfloat16: 756e12, torch.float16: 756e12, torch.float32: 51e12},
    "H100": {torch.bfloat16: 989e12, torch.float16: 989e12, torch.float32: 67e12},
    "A100": {torch.bfloat16: 312e12, torch.float16: 312e12, torch.float32: 19.5e12},
    "L40S": {torch.bfloat16: 362e12, torch.float16: 362e12, torch.float32: 91.6e12},
    "A10G": {torch.bfloat16: 70e12, torch.float16: 70e12, torch.float32: 31.2e12},
    "RTX 4090": {torch.bfloat16: 165e12, torch.float16: 165e12, torch.float32: 82.6e12},
    "V100": {torch.float16: 125e12, torch.float32: 15.7e12},
    "T4": {torch.float16: 65e12, torch.float32: 8.1e12},
}


def peak_flops(device_name: str, dtype: torch.dtype) -> float | None:
    """Peak FLOP/s of a device (by name, e.g. torch.cuda.get_device_name()) in a dtype, or None if unknown."""
    for key, table in PEAK_FLOPS.items():
        if key.lower() in device_name.lower():
            return table.get(dtype)
    return None
