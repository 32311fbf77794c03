"""What the deformable encoder and decoder layers share: the post-norm FFN sub-block and
activation checkpointing (``with_cp``)."""
from typing import Callable

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule
from torch import Tensor, nn

from ddetr.ops import Dropout


class DeformableDetrTransformerLayerBase(BaseModule):
    """Base of DeformableDetrTransformerEncoderLayer and ...DecoderLayer.

    The FFN, x = norm(x + dropout(linear2(dropout(relu(linear1(x)))))), is written here
    once. Its parameters keep the names of the original release and of the converters
    (``linear1``, ``linear2`` on the layer itself; the norm is the layer's own
    ``norm2`` / ``norm3``), so state dicts are unchanged.

    ``with_cp`` (mmcv/mmdet's name): the layer's activations are not kept for the
    backward pass but recomputed in it (``torch.utils.checkpoint``, non-reentrant, dropout
    replayed with the same random state: ``ddetr.ops.Dropout``, nn.Dropout with a faster
    CPU kernel, draws its masks from that state), trading one extra forward of the layer
    for the memory of its intermediate tensors. Results and gradients are unchanged.

    Args:
        with_cp (bool): activation checkpointing while gradients are being recorded.
    """

    def __init__(self, *, with_cp: bool = False, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.with_cp = with_cp

    def build_ffn(self, *, embed_dims: int, feedforward_channels: int,
                  dropout: float) -> None:
        """Create the FFN's modules (call where the layer's FFN sits in its order)."""
        self.linear1 = nn.Linear(embed_dims, feedforward_channels)
        self.ffn_dropout = Dropout(dropout)
        self.linear2 = nn.Linear(feedforward_channels, embed_dims)
        self.ffn_out_dropout = Dropout(dropout)

    def forward_ffn(self, query: Tensor, norm: nn.Module) -> Tensor:
        """(bs, n, C) -> (bs, n, C): the FFN with its residual connection and ``norm``."""
        hidden = self.ffn_dropout(F.relu(self.linear1(query)))  # (bs, n, feedforward)
        return norm(query + self.ffn_out_dropout(self.linear2(hidden)))

    def run(self, forward: Callable[..., Tensor], **inputs) -> Tensor:
        """``forward(**inputs)``, checkpointed when ``with_cp`` and autograd is recording."""
        if self.with_cp and torch.is_grad_enabled():
            return cp.checkpoint(forward, use_reentrant=False, **inputs)
        return forward(**inputs)
