"""Int8 decoding on the CPU: `--int8` for generate, eval and serve.

Every linear layer of a GPT (attention and MLP matrices, and the LM head) is replaced by an `Int8Linear`:
its weight stored as int8 with one scale per output row (symmetric, max-abs / 127), multiplied by
PyTorch's dynamically quantized linear kernel (fbgemm on x86, qnnpack on ARM), which accumulates in int32.
That kernel quantizes its whole input with one scale (7-bit levels so AVX2's u8 x s8 pairwise sums cannot
saturate), which would make a token's output depend on the other rows of its batch and on whether the KV
cache is used; so each input row is first divided by its own max |x|, and one extra row [1, -1, 0, ...]
pins the kernel's range to [-1, 1] (steps of 2/127: 129 levels): every row is quantized on its own
(per-token scales), and the result is scaled back. The embeddings, LayerNorms, attention and softmax stay
fp32. The model is for inference only (no gradients, not saved); the original fp32 matrices are dropped.

Cost and gain are measured in docs/BENCHMARKS.md (benchmarks/generate.py --int8): decode speed, and the
perplexity delta with `gpt2kit eval --int8`. PyTorch marks its quantized tensors deprecated (pytorch issue
184982, pointing to torchao); while they exist this uses them, and when they are gone `--int8` says so in
one line instead of failing inside the kernel.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from gpt2kit.errors import UserError


class Int8Linear(nn.Module):
    """nn.Linear with an int8 weight (per-output-row scales) and a dynamically quantized input."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float().cpu()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).double()
        zero = torch.zeros(w.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # PyTorch's deprecation notice; the module docstring says it
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
            # no bias in the kernel: it is added in fp32 after rescaling
            self._packed = torch.ops.quantized.linear_prepack(qweight, None)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().cpu())
        pin = torch.zeros(1, self.in_features)
        pin[0, 0], pin[0, -1] = 1.0, -1.0  # the row that fixes the kernel's input range to [-1, 1]
        self.register_buffer("_pin", pin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1]).float()
        r = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
        y = torch.ops.quantized.linear_dynamic(torch.cat([rows / r, self._pin]), self._packed, True)[:-1] * r
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def _engines() -> list[str]:
    return [e for e in torch.backends.quantized.supported_engines if e != "none"]


def int8_available() -> str | None:
    """None when this PyTorch can run Int8Linear, else why not (one phrase)."""
    ops = getattr(torch.ops, "quantized", None)
    if ops is None or not hasattr(ops, "linear_dynamic") or not hasattr(torch, "quantize_per_channel"):
        return f"this PyTorch ({torch.__version__}) has no dynamically quantized linear kernel"
    if not _engines():
        return f"this PyTorch ({torch.__version__}) was built without a quantized engine (fbgemm / qnnpack)"
    return None


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace the linear layers of `model` (on the CPU) by Int8Linear, in place; returns the model in eval
    mode. A tied LM head gets its own int8 copy; the token embedding it shared stays fp32."""
    why = int8_available()
    if why:
        raise UserError(f"--int8: {why}; run without --int8")
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise UserError("--int8 runs on the CPU only (PyTorch's int8 kernels); pass --device cpu, or drop "
                        "--int8 on a GPU (bf16 is the fast path there)")
    if not torch.backends.quantized.engine or torch.backends.quantized.engine == "none":
        torch.backends.quantized.engine = _engines()[0]
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    for name, linear in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, Int8Linear(linear))
    return model.eval().requires_grad_(False)
