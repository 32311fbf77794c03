"""A plain multi-layer perceptron (Linear, ReLU, ..., Linear): the 3-layer FFN that
regresses boxes in DETR-style heads."""
from typing import List

import torch.nn.functional as F
from torch import Tensor, nn

from ddetr.errors import ConfigError


class MLP(nn.Module):
    """``num_layers`` linear layers, ReLU between them (not after the last).

    Args:
        input_dims (int): input channels.
        hidden_dims (int): channels of the hidden layers.
        output_dims (int): output channels.
        num_layers (int): number of linear layers (>= 1).
    """

    def __init__(self, input_dims: int, hidden_dims: int, output_dims: int,
                 num_layers: int) -> None:
        super().__init__()
        if num_layers < 1:
            raise ConfigError(f'MLP: num_layers must be >= 1, got {num_layers}')
        dims: List[int] = [input_dims] + [hidden_dims] * (num_layers - 1) + [output_dims]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x
