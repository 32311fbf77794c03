"""What the deformable encoder and decoder layers share: the post-norm FFN sub-block and
activation checkpointing (``with_cp``)."""
from typing import Callable

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule
from torch import Tensor, nn

from .. import fast_paths


class DeformableDetrTransformerLayerBase(BaseModule):
    """Base of DeformableDetrTransformerEncoderLayer and ...DecoderLayer.

    The FFN, x = norm(x + dropout(linear2(dropout(relu(linear1(x)))))), is written here
    once. Its parameters keep the names of the original release and of the converters
    (``linear1``, ``linear2`` on the layer itself; the norm is the layer's own
    ``norm2`` / ``norm3``), so state dicts are unchanged.

    ``with_cp`` (mmcv/mmdet's name): the layer's activations are not kept for the
    backward pass but recomputed in it (``torch.utils.checkpoint``, non-reentrant, dropout
    replayed with the same random state: :class:`ddetr.models.fast_paths.Dropout` draws its
    masks from that state), trading one extra forward of the layer
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
        self.ffn_dropout = fast_paths.Dropout(dropout)
        self.linear2 = nn.Linear(feedforward_channels, embed_dims)
        self.ffn_out_dropout = fast_paths.Dropout(dropout)

    def forward_ffn(self, query: Tensor, norm: nn.Module) -> Tensor:
        """(bs, n, C) -> (bs, n, C): the FFN with its residual connection and ``norm``."""
        chunk = fast_paths.ffn_chunk_tokens(query)
        if chunk > 0:  # CPU inference: a few thousand tokens at a time, ReLU in place
            return self._forward_ffn_in_chunks(query, norm, chunk)
        return self._ffn(query, norm, relu_in_place=False)

    def _ffn(self, x: Tensor, norm: nn.Module, relu_in_place: bool) -> Tensor:
        """norm(x + FFN(x)) on all of x's rows (..., C)."""
        hidden = F.relu(self.linear1(x), inplace=relu_in_place)  # (..., feedforward)
        return norm(x + self.ffn_out_dropout(self.linear2(self.ffn_dropout(hidden))))

    def _forward_ffn_in_chunks(self, query: Tensor, norm: nn.Module, chunk: int) -> Tensor:
        """forward_ffn without autograd, ``chunk`` tokens at a time with the ReLU in place
        (see :func:`ddetr.models.fast_paths.ffn_chunk_tokens`)."""
        flat = query.reshape(-1, query.shape[-1])  # (bs * n, C)
        chunks = [self._ffn(flat[start:start + chunk], norm, relu_in_place=True)
                  for start in range(0, flat.shape[0], chunk)]
        out = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        return out.view(query.shape)

    def run(self, forward: Callable[..., Tensor], **inputs) -> Tensor:
        """``forward(**inputs)``, checkpointed when ``with_cp`` and autograd is recording."""
        if self.with_cp and torch.is_grad_enabled():
            return cp.checkpoint(forward, use_reentrant=False, **inputs)
        return forward(**inputs)
