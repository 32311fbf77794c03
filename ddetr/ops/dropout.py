"""Dropout whose mask is a pure function of (seed, element index), for CPU training.

``counter_dropout(x, p, seed)`` is a torch custom op (``torch.ops.ddetr.counter_dropout``)
with a C++ CPU kernel in ``ddetr._C``: y = x * keep / (1 - p), each keep drawn from a
counter-based generator (the element's index hashed with the seed). The backward is the
same op on the gradient, so no mask is stored, and one pass over memory does what torch's
CPU dropout does in three (``bernoulli_`` into a float mask, its rescale, the multiply):
about 4x less time for the same tensor, and no mask tensor between forward and backward.

``Dropout`` is ``nn.Dropout`` with that kernel for CPU tensors in training mode. It draws
each call's seed from torch's default generator, so ``torch.manual_seed`` makes runs
reproducible and activation checkpointing (which saves and restores that generator)
replays the same mask in its recomputation. The masks differ from torch's (another
generator), their distribution does not: each element kept with probability 1 - p (to
2**-32), independently. Elsewhere (CUDA, whose dropout is already one fused kernel; no
compiled op; inplace; TorchScript / ONNX tracing; inside torch.compile, whose generated
code has its own dropout) it is ``nn.Dropout`` itself.
"""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ms_deform_attn import _C, _tracing

HAS_COUNTER_DROPOUT = _C is not None and hasattr(torch.ops.ddetr, 'counter_dropout')

__all__ = ['Dropout', 'counter_dropout', 'HAS_COUNTER_DROPOUT']


def counter_dropout(x: Tensor, p: float, seed: int) -> Tensor:
    """y = x * keep / (1 - p), keep a pure function of (``seed``, element index); CPU only.

    Differentiable (the gradient is the same op on the output gradient); ``0 <= p < 1``.
    """
    if not HAS_COUNTER_DROPOUT:
        raise RuntimeError('counter_dropout needs the compiled ddetr._C, which is missing')
    return torch.ops.ddetr.counter_dropout(x, float(p), int(seed))


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same arguments, state and repr) with ``counter_dropout`` on the CPU."""

    def forward(self, input: Tensor) -> Tensor:
        if (not self.training or self.inplace or not 0.0 < self.p < 1.0
                or input.device.type != 'cpu' or not HAS_COUNTER_DROPOUT or _tracing()
                or torch.compiler.is_compiling()):
            return F.dropout(input, self.p, self.training, self.inplace)
        # one draw from torch's default CPU generator (which it advances)
        seed = int(torch.randint(1 << 62, (), dtype=torch.int64, device='cpu'))
        return torch.ops.ddetr.counter_dropout(input, self.p, seed)


if HAS_COUNTER_DROPOUT:

    @torch.library.register_fake('ddetr::counter_dropout')
    def _counter_dropout_fake(input, p, seed):
        return torch.empty_like(input, memory_format=torch.contiguous_format)

    def _setup_context(ctx, inputs, output):
        ctx.p, ctx.seed = inputs[1], inputs[2]

    def _backward(ctx, grad_output):
        # d(x * m)/dx = m: the same mask, drawn again from the same seed
        return torch.ops.ddetr.counter_dropout(grad_output, ctx.p, ctx.seed), None, None

    torch.library.register_autograd('ddetr::counter_dropout', _backward,
                                    setup_context=_setup_context)
