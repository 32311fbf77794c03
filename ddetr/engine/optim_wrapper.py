"""Mixed precision on CPU: mmengine's AmpOptimWrapper requires a GPU."""
from contextlib import contextmanager

import torch
from mmengine.optim import OptimWrapper

from ddetr.registry import OPTIM_WRAPPERS


@OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(OptimWrapper):
    """Runs the forward pass under ``torch.autocast('cpu', dtype=bfloat16)``.

    bfloat16 keeps float32's exponent range, so no loss scaling is needed; parameters,
    gradients and the optimizer stay in float32. ``tools/train.py --amp`` picks this
    wrapper when no GPU is available.
    """

    def __init__(self, *args, dtype: torch.dtype = torch.bfloat16, **kwargs):
        super().__init__(*args, **kwargs)
        self.cast_dtype = dtype

    @contextmanager
    def optim_context(self, model):
        with super().optim_context(model), torch.autocast('cpu', dtype=self.cast_dtype):
            yield
