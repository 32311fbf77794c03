"""CPU fast paths: the places where ddetr computes the paper's model differently from the
plain PyTorch way, to run faster on CPU. Each one gives the plain path's values (to the bit,
or up to float rounding, as its docstring says); the model code calls them by name so that
they can be seen, and this module holds them all, so that they can be switched off at once:

    DDETR_FAST_PATHS=0 python tools/test.py ...       # every tool, through the environment
    with fast_paths.disabled(): model(...)            # in code, for debugging and parity

What each buys, and how it was measured: docs/performance.md.

========================  =====================================================  ========
fast path                 instead of                                             when
========================  =====================================================  ========
:class:`Dropout`          ``nn.Dropout``: a counter-based mask (ddetr's op)      CPU train
:class:`ChannelsLast...`  the ResNet stem's ``nn.MaxPool2d`` in NCHW             CPU
:func:`backbone_input`    NCHW images into the backbone (channels-last instead)  CPU infer.
:func:`ffn_chunk_tokens`  the FFN on all tokens at once (4096 at a time)         CPU infer.
:func:`zero_masked`       ``masked_fill(mask, 0)`` (a multiply instead)          always
========================  =====================================================  ========
"""
import contextlib
import os
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from ddetr.ops import HAS_COUNTER_DROPOUT, counter_dropout

__all__ = ['ENV', 'enabled', 'disabled', 'Dropout', 'ChannelsLastMaxPool2d',
           'use_channels_last_max_pool', 'backbone_input', 'ffn_chunk_tokens', 'zero_masked',
           'FFN_CHUNK_TOKENS']

#: Environment variable: ``0`` switches every fast path off (read on every call).
ENV = 'DDETR_FAST_PATHS'
_override: Optional[bool] = None  # set by disabled(), wins over the environment


def enabled() -> bool:
    """Whether the fast paths are on: ``disabled()``'s setting, else ``$DDETR_FAST_PATHS``
    (on unless it is ``0``)."""
    if _override is not None:
        return _override
    return os.environ.get(ENV, '1').strip() != '0'


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Inside the block every fast path takes the plain PyTorch path."""
    global _override
    previous, _override = _override, False
    try:
        yield
    finally:
        _override = previous


def _tracing() -> bool:
    return (torch.jit.is_tracing() or torch.jit.is_scripting()
            or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling())


# --------------------------------------------------------------------------- dropout
class Dropout(nn.Dropout):
    """``nn.Dropout`` (same arguments, state and repr) that trains on CPU with
    :func:`ddetr.ops.counter_dropout`: one pass over memory and no mask tensor kept for the
    backward, where torch's CPU dropout writes a float mask, rescales it and multiplies
    (about 4x the time). Each call's seed is one draw from torch's default generator, so
    ``torch.manual_seed`` reproduces runs and activation checkpointing replays the same
    mask. The masks differ from torch's, their distribution does not (each element kept
    with probability 1 - p, independently). Elsewhere (CUDA, whose dropout is one fused
    kernel; no compiled op; ``inplace``; tracing and ``torch.compile``) it is
    ``nn.Dropout``."""

    def forward(self, input: Tensor) -> Tensor:
        if (not self.training or self.inplace or not 0.0 < self.p < 1.0
                or input.device.type != 'cpu' or not HAS_COUNTER_DROPOUT or _tracing()
                or not enabled()):
            return F.dropout(input, self.p, self.training, self.inplace)
        seed = int(torch.randint(1 << 62, (), dtype=torch.int64, device='cpu'))
        return counter_dropout(input, self.p, seed)


# --------------------------------------------------------------------------- max-pool
class _ChannelsLastMaxPool2d(torch.autograd.Function):
    """Forward in channels-last memory, backward in torch's NCHW kernel fed with the
    indices the forward found."""

    @staticmethod
    def forward(ctx, x: Tensor, kernel_size, stride, padding, dilation, ceil_mode):
        out, indices = F.max_pool2d_with_indices(
            x.contiguous(memory_format=torch.channels_last), kernel_size, stride, padding,
            dilation, ceil_mode)
        out, indices = out.contiguous(), indices.contiguous()
        ctx.save_for_backward(x, indices)
        ctx.pool_args = (kernel_size, stride, padding, dilation, ceil_mode)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, indices = ctx.saved_tensors
        grad_x = torch.ops.aten.max_pool2d_with_indices_backward(
            grad_out.contiguous(), x, *ctx.pool_args, indices)
        return grad_x, None, None, None, None, None


class ChannelsLastMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` (the same arguments and results) whose CPU forward runs in
    channels-last memory. torch's CPU max-pool of an NCHW tensor runs one output at a
    time, its channels-last kernel vectorizes over the channels (the quick start's stem,
    (4, 32, 128, 128) bfloat16: 6.7 against 3.4 ms, conversions included); the
    channels-last backward is the slower one, so the backward stays NCHW. Both kernels
    scan a window in the same order and keep the first maximum, so outputs, indices and
    gradients are ``nn.MaxPool2d``'s to the bit. Inputs that are not 4-d contiguous CPU
    tensors, ``return_indices=True``, tracing and a disabled switch take
    ``nn.MaxPool2d``'s path."""

    def forward(self, x: Tensor) -> Tensor:
        if (x.device.type != 'cpu' or x.dim() != 4 or self.return_indices
                or not x.is_contiguous() or torch.jit.is_tracing()
                or torch.jit.is_scripting() or not enabled()):
            return super().forward(x)
        # nn.MaxPool2d stores stride=None as the kernel size
        return _ChannelsLastMaxPool2d.apply(x, _pair(self.kernel_size), _pair(self.stride),
                                            _pair(self.padding), _pair(self.dilation),
                                            self.ceil_mode)


def use_channels_last_max_pool(module: nn.Module) -> int:
    """Replace every plain ``nn.MaxPool2d`` inside ``module`` (mmdet's ResNet stem) by a
    :class:`ChannelsLastMaxPool2d` with the same arguments (no parameters, so state dicts
    are unchanged). Returns how many were replaced."""
    replaced = 0
    for name, child in module.named_children():
        if type(child) is nn.MaxPool2d and not child.return_indices:
            setattr(module, name, ChannelsLastMaxPool2d(
                child.kernel_size, child.stride, child.padding, child.dilation,
                ceil_mode=child.ceil_mode))
            replaced += 1
        else:
            replaced += use_channels_last_max_pool(child)
    return replaced


# ---------------------------------------------------------------- inference on CPU
def backbone_input(batch_inputs: Tensor) -> Tensor:
    """The images as the backbone should get them: on CPU without autograd (inference),
    in channels-last memory, which oneDNN's convolutions run without reordering their
    activations (the ResNet-50 backbone at 800x1333: 1.2-1.4x faster); the same values up
    to rounding, and the neck's maps come out channels-last, which flattening into tokens
    reads without a transposing copy. Otherwise unchanged."""
    if batch_inputs.is_cpu and not torch.is_grad_enabled() and enabled():
        return batch_inputs.contiguous(memory_format=torch.channels_last)
    return batch_inputs


#: Tokens per chunk of the FFN in CPU inference (0: the whole tensor at once).
FFN_CHUNK_TOKENS = 4096


def ffn_chunk_tokens(query: Tensor) -> int:
    """How many tokens the FFN of ``query`` takes at a time, 0 for all at once. On CPU
    without autograd, FFN_CHUNK_TOKENS with the ReLU in place: no tensor of every token's
    hidden channels is allocated (the encoder's at 800x1333 is 91 MB a layer, mapped
    afresh each time) and the matrix multiplies write cache-sized outputs. Every operation
    is row by row, so the result is the same up to the matrix multiply's blocking."""
    if query.is_cpu and not torch.is_grad_enabled() and enabled() and not _tracing():
        return FFN_CHUNK_TOKENS  # (a trace would fix the number of chunks at its size)
    return 0


# -------------------------------------------------------------------------- masking
def zero_masked(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` with the entries where ``mask`` (broadcastable to ``x``) is True set to zero:
    ``masked_fill``'s values (up to the sign of a zero) from a multiply by the 0/1
    complement of the mask, as torch's CPU ``masked_fill`` with a broadcast mask and its
    backward are ~6x slower ((4, 1360, 128) bfloat16: 0.3 against 0.05 ms). A NaN or inf
    under the mask would stay NaN here; the inputs are projections of finite features."""
    if not enabled():
        return x.masked_fill(mask, 0)
    return x * (~mask).to(x.dtype)
