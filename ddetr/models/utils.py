"""Small tensor helpers shared by the model: inverse sigmoid, box formats, and the
cross-process average of the loss normalizer. Pure functions of tensors."""
from typing import List, Tuple

import torch
import torch.distributed as dist
from torch import Tensor


def geometry_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype geometry (reference points, valid ratios, proposals, box refinement,
    sampling locations) is computed in: float32, or float64 when one of ``dtypes`` is.
    Never a half-precision type, whatever the features' dtype or autocast say."""
    result = torch.float32
    for dtype in dtypes:
        result = torch.promote_types(result, dtype)
    return result


def level_shapes(spatial_shapes) -> List[Tuple[int, int]]:
    """The (H, W) of every level: a list of pairs as is (no device access), or from an
    (L, 2) tensor through :func:`ddetr.ops.level_shapes` (read back once, a device sync on
    GPU; 0-d tensors while tracing an ONNX export, so that the sizes stay symbolic)."""
    if isinstance(spatial_shapes, Tensor):
        from ddetr.ops import level_shapes as from_tensor
        return from_tensor(spatial_shapes)
    return [(height, width) for height, width in spatial_shapes]


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """sigma^-1(x) = log(x / (1 - x)), with x clamped to [0, 1] and both x and 1 - x
    clamped to at least ``eps`` so the result stays finite (about +-11.5 at the ends)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def offset_boxes(deltas: Tensor, references: Tensor) -> Tensor:
    """Boxes predicted relative to a reference, in sigmoid space (A.3, A.4):

    - reference boxes (..., 4): b = sigma(delta + sigma^-1(r)) for all of (cx, cy, w, h);
    - reference points (..., 2): the point is the initial guess of the centre,
      b = (sigma(delta_xy + sigma^-1(p)), sigma(delta_wh)).

    deltas: (..., 4) unnormalized predictions. Returns (..., 4) normalized (cx, cy, w, h).
    Callers detach ``references`` where the gradient must stop (A.4). Computed in float32
    (or float64, see ``geometry_dtype``) outside autocast, whatever the deltas' dtype:
    the sum in logit space and the sigmoid are geometry.
    """
    dtype = geometry_dtype(deltas.dtype, references.dtype)
    with torch.autocast(deltas.device.type, enabled=False):
        return _offset_boxes(deltas.to(dtype), references.to(dtype))


def _offset_boxes(deltas: Tensor, references: Tensor) -> Tensor:
    if references.shape[-1] == 4:
        return (deltas + inverse_sigmoid(references)).sigmoid()
    if references.shape[-1] != 2:
        raise ValueError(f'references must end in 2 (points) or 4 (boxes), got '
                         f'{tuple(references.shape)}')
    centers = deltas[..., :2] + inverse_sigmoid(references)
    return torch.cat([centers, deltas[..., 2:]], -1).sigmoid()


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) boxes (center x, center y, width, height) -> (x1, y1, x2, y2)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(..., 4) boxes (x1, y1, x2, y2) -> (center x, center y, width, height)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def average_across_processes(value: float, device: torch.device) -> float:
    """The mean of ``value`` over all processes of the default group (itself when
    torch.distributed is not initialized). Used for the number-of-boxes normalizer so
    every process divides its loss by the same number."""
    if not (dist.is_available() and dist.is_initialized()):
        return float(value)
    total = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.item() / dist.get_world_size()
