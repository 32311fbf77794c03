"""Mixed precision on CPU: mmengine's AmpOptimWrapper requires a GPU."""
from contextlib import contextmanager

import torch
from mmengine.logging import print_log
from mmengine.optim import OptimWrapper

from ddetr.registry import OPTIM_WRAPPERS


def cpu_has_fast_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (oneDNN's test: AVX-512 BW/VL/DQ or
    newer). Without it bfloat16 matmuls and convolutions are emulated: measured on an
    AVX2-only 2-core EPYC, one quick-start training step took 19 s in bfloat16 against
    1.3 s in float32."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(OptimWrapper):
    """Runs the forward pass under ``torch.autocast('cpu', dtype=bfloat16)``.

    bfloat16 keeps float32's exponent range, so no loss scaling is needed; parameters,
    gradients and the optimizer stay in float32. ``tools/train.py --amp`` picks this
    wrapper when no GPU is available.

    On a CPU without hardware bfloat16 (:func:`cpu_has_fast_bfloat16`), where autocast
    would make training many times slower, it runs in float32 and says so once;
    ``force=True`` autocasts anyway.
    """

    def __init__(self, *args, dtype: torch.dtype = torch.bfloat16, force: bool = False,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.cast_dtype = dtype
        self.enabled = force or dtype != torch.bfloat16 or cpu_has_fast_bfloat16()
        if not self.enabled:
            print_log('CPUAmpOptimWrapper: this CPU has no hardware bfloat16 (AVX-512), where '
                      'bfloat16 autocast runs many times slower than float32: training in '
                      'float32 (optim_wrapper.force=True autocasts anyway)',
                      logger='current', level=30)

    @contextmanager
    def optim_context(self, model):
        with super().optim_context(model), torch.autocast('cpu', dtype=self.cast_dtype,
                                                          enabled=self.enabled):
            yield
