"""Figure 6 of the paper (A.6): where the multi-scale deformable attention of the LAST
encoder layer and of the LAST decoder layer samples for one query, drawn over the image.

    python tools/analysis/vis_sampling_points.py configs/ddetr_r50.py ckpt.pth demo.jpg
    python tools/analysis/vis_sampling_points.py CONFIG CKPT IMAGE --query-index 17 \\
        --query-point 320 240 --out fig6.png
    python tools/analysis/vis_sampling_points.py CONFIG none IMAGE   # random weights

Two panels, each point a filled circle coloured by its attention weight (all heads and
all feature levels in one picture, as in the paper):
  (a) encoder: the query is an encoder pixel, drawn as a green cross (its reference
      point). It is the pixel of --encoder-level (0 = the finest map, stride 8) under
      --query-point X Y (original-image pixels); by default under the centre of the
      decoder query's predicted box.
  (b) decoder: the query is object query --query-index; by default the one with the
      highest-scoring detection. Its predicted box is the green rectangle, with category
      and score above it.

The sampling locations and attention weights are captured from what the deformable
attention op receives (the model itself is unchanged). They are normalized to each
level's padded map; they are converted to pixels of the network input with the level's
valid ratio (1 for a single unpadded image) and then to the original image with the test
pipeline's scale factor. Points outside the image are not shown (their number is printed).
"""
import argparse
import inspect
import os
import os.path as osp
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ddetr.apis import init_detector, prepare_image
from ddetr.apis.inference import as_rgb
from ddetr.cli import add_cfg_options, entry_point
from ddetr.errors import ConfigError
from ddetr.models.layers import multi_scale_deformable_attention as msda_module


class SamplingCapture:
    """Records, for each named MultiScaleDeformableAttention, the arguments its last
    forward passed to ``ms_deform_attn`` (``sampling_locations``, ``attention_weights``,
    ``spatial_shapes``, ``level_start_index``) and its ``reference_points``, plus the
    ``valid_ratios`` the encoder received. Use as a context manager around a forward.

    It wraps the op where the attention module calls it and adds forward hooks; both are
    removed on exit, and outputs are unchanged.
    """

    def __init__(self, attentions: Dict[str, nn.Module],
                 encoder: Optional[nn.Module] = None) -> None:
        self.attentions = attentions
        self.encoder = encoder
        self.records: Dict[str, Dict[str, Tensor]] = {}
        self.valid_ratios: Optional[Tensor] = None
        self._active: Optional[str] = None
        self._handles = []
        self._original_op = None

    def _wrapped_op(self, value, spatial_shapes, level_start_index, sampling_locations,
                    attention_weights, *args, **kwargs):
        if self._active is not None:
            self.records.setdefault(self._active, {}).update(
                sampling_locations=sampling_locations.detach().clone(),
                attention_weights=attention_weights.detach().clone(),
                spatial_shapes=spatial_shapes.detach().clone(),
                level_start_index=level_start_index.detach().clone())
        return self._original_op(value, spatial_shapes, level_start_index, sampling_locations,
                                 attention_weights, *args, **kwargs)

    def _pre_hook(self, name):
        def hook(module, args, kwargs):
            bound = inspect.signature(module.forward).bind(*args, **kwargs)
            self.records.setdefault(name, {})['reference_points'] = \
                bound.arguments['reference_points'].detach().clone()
            self._active = name
        return hook

    def _post_hook(self, module, args, output):
        self._active = None

    def _encoder_hook(self, module, args, kwargs):
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
        self.valid_ratios = bound.arguments['valid_ratios'].detach().clone()

    def __enter__(self) -> 'SamplingCapture':
        self._original_op = msda_module.ms_deform_attn
        msda_module.ms_deform_attn = self._wrapped_op
        for name, module in self.attentions.items():
            self._handles.append(module.register_forward_pre_hook(self._pre_hook(name),
                                                                  with_kwargs=True))
            self._handles.append(module.register_forward_hook(self._post_hook))
        if self.encoder is not None:
            self._handles.append(self.encoder.register_forward_pre_hook(
                self._encoder_hook, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        msda_module.ms_deform_attn = self._original_op
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._active = None


# ------------------------------------------------------------------- coordinates
def to_image_pixels(points: Tensor, valid_ratios: Tensor, img_shape: Sequence[int],
                    scale_factor: Sequence[float] = (1.0, 1.0)) -> Tensor:
    """Normalized (x, y) on each level's padded map -> original-image pixels.

    points: (..., L, K, 2), level l normalized to level l's padded map; valid_ratios:
    (L, 2) as (r_w, r_h). Such a point lies at ``p / r_l`` of the unpadded network input
    (``img_shape`` (H, W)), which the test pipeline scaled by ``scale_factor`` (w, h) from
    the original image."""
    if points.dim() < 3 or points.shape[-3] != valid_ratios.shape[0] or points.shape[-1] != 2:
        raise ValueError(f'points must be (..., L, K, 2) with L = {valid_ratios.shape[0]} '
                         f'levels, got {tuple(points.shape)}')
    height, width = img_shape[:2]
    size = points.new_tensor([width, height])
    scale = points.new_tensor([float(v) for v in scale_factor[:2]])
    ratios = valid_ratios.to(points.dtype)[:, None, :]  # (L, 1, 2)
    return points / ratios * size / scale


def encoder_query_index(point: Sequence[float], level: int, spatial_shapes: Tensor,
                        level_start_index: Tensor, valid_ratios: Tensor,
                        img_shape: Sequence[int],
                        scale_factor: Sequence[float] = (1.0, 1.0)) -> Tuple[int, int, int]:
    """The encoder query (flattened index over all levels) of the level-``level`` pixel
    under ``point`` (x, y) in original-image pixels. Returns (index, row, col)."""
    num_levels = spatial_shapes.shape[0]
    if not 0 <= level < num_levels:
        raise ConfigError(f'--encoder-level {level}: the model has levels 0..{num_levels - 1}')
    height, width = img_shape[:2]
    map_h, map_w = spatial_shapes[level].tolist()
    ratio_w, ratio_h = valid_ratios[level].tolist()
    # original pixels -> network input -> normalized to the unpadded input -> level pixels
    x_norm = point[0] * scale_factor[0] / width
    y_norm = point[1] * scale_factor[1] / height
    valid_w, valid_h = max(round(ratio_w * map_w), 1), max(round(ratio_h * map_h), 1)
    col = min(max(int(x_norm * valid_w), 0), valid_w - 1)
    row = min(max(int(y_norm * valid_h), 0), valid_h - 1)
    return int(level_start_index[level]) + row * map_w + col, row, col


def box_to_image_pixels(box_cxcywh: Tensor, img_shape: Sequence[int],
                        scale_factor: Sequence[float]) -> Tensor:
    """Normalized (cx, cy, w, h) of the network input -> (x1, y1, x2, y2) original pixels,
    as the head's post-processing does."""
    height, width = img_shape[:2]
    cx, cy, w, h = box_cxcywh.tolist()
    box = torch.tensor([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    box = box * torch.tensor([width, height, width, height])
    box[0::2] = box[0::2].clamp(0, width)
    box[1::2] = box[1::2].clamp(0, height)
    return box / torch.tensor([scale_factor[0], scale_factor[1]] * 2)


# ----------------------------------------------------------------------- analysis
def sampling_points(model: nn.Module, batch: dict, query_index: Optional[int] = None,
                    query_point: Optional[Sequence[float]] = None,
                    encoder_level: int = 0) -> dict:
    """Run the model once on ``batch`` (from ``ddetr.apis.prepare_image``, batch 1) and
    return, for the chosen encoder and decoder queries, the sampling points in
    original-image pixels with their attention weights (all heads, levels and points)."""
    inputs, samples = batch['inputs'], batch['data_samples']
    if inputs.shape[0] != 1:
        raise ValueError(f'one image at a time, got a batch of {inputs.shape[0]}')
    meta = samples[0].metainfo
    img_shape = meta['img_shape']
    scale_factor = meta.get('scale_factor', (1.0, 1.0))
    attentions = dict(encoder=model.encoder.layers[-1].self_attn,
                      decoder=model.decoder.layers[-1].cross_attn)
    with torch.no_grad(), SamplingCapture(attentions, model.encoder) as capture:
        outputs = model(inputs, samples, mode='tensor')
    missing = [name for name in attentions if 'sampling_locations' not in
               capture.records.get(name, {})]
    if missing or capture.valid_ratios is None:
        raise RuntimeError(f'no deformable attention call captured for {missing or "encoder"}')
    valid_ratios = capture.valid_ratios[0]  # (L, 2)

    # decoder query: the best detection of the last layer unless given
    cls_scores = outputs[0][-1, 0].sigmoid()  # (nq, num_classes)
    num_queries = cls_scores.shape[0]
    best_scores, best_labels = cls_scores.max(-1)
    if query_index is None:
        query_index = int(best_scores.argmax())
    elif not 0 <= query_index < num_queries:
        raise ConfigError(f'--query-index {query_index}: the model has {num_queries} object '
                          f'queries (0..{num_queries - 1})')
    box = box_to_image_pixels(outputs[1][-1, 0, query_index].float(), img_shape, scale_factor)

    # encoder query: the pixel under the given point, or under the box centre
    if query_point is None:
        query_point = ((box[0] + box[2]).item() / 2, (box[1] + box[3]).item() / 2)
    enc = capture.records['encoder']
    enc_index, row, col = encoder_query_index(query_point, encoder_level, enc['spatial_shapes'],
                                              enc['level_start_index'], valid_ratios,
                                              img_shape, scale_factor)
    dec = capture.records['decoder']
    reference = enc['reference_points'][0, enc_index, encoder_level]  # (2,)
    return dict(
        encoder=dict(
            index=enc_index, level=encoder_level, row=row, col=col,
            requested_point=tuple(float(v) for v in query_point),
            reference_point=to_image_pixels(
                reference[None, None], valid_ratios[encoder_level:encoder_level + 1],
                img_shape, scale_factor)[0, 0],
            points=to_image_pixels(enc['sampling_locations'][0, enc_index], valid_ratios,
                                   img_shape, scale_factor),  # (M, L, K, 2)
            weights=enc['attention_weights'][0, enc_index]),  # (M, L, K)
        decoder=dict(
            index=query_index, label=int(best_labels[query_index]),
            score=float(best_scores[query_index]), box=box,
            points=to_image_pixels(dec['sampling_locations'][0, query_index], valid_ratios,
                                   img_shape, scale_factor),
            weights=dec['attention_weights'][0, query_index]),
        ori_shape=tuple(meta.get('ori_shape', img_shape)[:2]), capture=capture)


# ----------------------------------------------------------------------- drawing
def draw(image_rgb: np.ndarray, result: dict, class_names: Sequence[str], out_file: str,
         cmap: str = 'jet', title: Optional[str] = None) -> Dict[str, int]:
    """Two panels (a) encoder, (b) decoder; returns the number of points drawn per panel
    (points outside the image are left out)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    height, width = image_rgb.shape[:2]
    fig_w = 12.0
    fig_h = max(3.0, fig_w / 2 * height / width + 0.8)
    fig, axes = plt.subplots(1, 2, figsize=(fig_w, fig_h), dpi=120)
    shown = {}
    marker = max(8.0, 0.012 * max(height, width) * 72 / 120) ** 2 / 4
    for ax, name in zip(axes, ('encoder', 'decoder')):
        panel = result[name]
        points = panel['points'].reshape(-1, 2).numpy()
        weights = panel['weights'].reshape(-1).float().numpy()
        inside = ((points[:, 0] >= 0) & (points[:, 0] < width) & (points[:, 1] >= 0) &
                  (points[:, 1] < height))
        shown[name] = int(inside.sum())
        order = np.argsort(weights[inside])  # heavy points on top
        ax.imshow(image_rgb)
        scatter = ax.scatter(points[inside][order, 0], points[inside][order, 1],
                             c=weights[inside][order], cmap=cmap, vmin=0.0,
                             vmax=max(float(weights.max()), 1e-6), s=marker,
                             edgecolors='none')
        cbar = fig.colorbar(scatter, ax=ax, fraction=0.046, pad=0.02)
        cbar.set_label('attention weight')
        if name == 'encoder':
            x, y = panel['reference_point'].tolist()
            ax.plot([x], [y], marker='+', color='lime', markersize=16, markeredgewidth=3)
            ax.set_title(f'(a) encoder, last layer: query pixel ({panel["row"]}, '
                         f'{panel["col"]}) of level {panel["level"]}', fontsize=9)
        else:
            x1, y1, x2, y2 = panel['box'].tolist()
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor='lime',
                                   linewidth=2))
            label = panel['label']
            name_text = class_names[label] if label < len(class_names) else str(label)
            ax.text(x1, max(y1 - 3, 0), f'{name_text}: {panel["score"]:.2f}', color='black',
                    fontsize=8, va='bottom',
                    bbox=dict(facecolor='lime', edgecolor='none', alpha=0.8, pad=1))
            ax.set_title(f'(b) decoder, last layer: object query {panel["index"]}',
                         fontsize=9)
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.axis('off')
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    directory = osp.dirname(osp.abspath(out_file))
    os.makedirs(directory, exist_ok=True)
    fig.savefig(out_file)
    plt.close(fig)
    return shown


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Figure 6: sampling points and attention weights of the last encoder '
                    'and decoder layer for one query, drawn over an image.',
        epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help="checkpoint file, or 'none' for random weights")
    parser.add_argument('image', help='image file')
    parser.add_argument('--query-index', type=int, default=None,
                        help='decoder object query (default: the highest-scoring detection)')
    parser.add_argument('--query-point', type=float, nargs=2, default=None,
                        metavar=('X', 'Y'),
                        help='encoder query: the pixel under (X, Y) in original-image '
                             'pixels (default: the centre of the decoder query\'s box)')
    parser.add_argument('--encoder-level', type=int, default=0,
                        help='feature level of the encoder query pixel (0 = finest)')
    parser.add_argument('--out', default='sampling_points.png', help='output PNG file')
    parser.add_argument('--cmap', default='jet', help='matplotlib colormap of the weights')
    parser.add_argument('--device', default='cpu', help='device to run on')
    add_cfg_options(parser)
    return parser.parse_args(argv)


@entry_point
def main(argv=None) -> int:
    args = parse_args(argv)
    print(f'building {args.config} with checkpoint {args.checkpoint}', flush=True)
    model = init_detector(args.config, args.checkpoint, args.device, args.cfg_options)
    batch = prepare_image(model, args.image)
    result = sampling_points(model, batch, args.query_index, args.query_point,
                             args.encoder_level)
    classes = model.dataset_meta['classes']
    enc, dec = result['encoder'], result['decoder']
    shown = draw(as_rgb(batch['img']), result, classes, args.out, args.cmap,
                 title=osp.basename(args.image))
    label = classes[dec['label']] if dec['label'] < len(classes) else dec['label']
    x1, y1, x2, y2 = dec['box'].tolist()
    rx, ry = enc['reference_point'].tolist()
    total = enc['weights'].numel()
    print(f'encoder query: level {enc["level"]} pixel ({enc["row"]}, {enc["col"]}), '
          f'reference point ({rx:.1f}, {ry:.1f}); {shown["encoder"]}/{total} points inside '
          f'the image')
    print(f'decoder query {dec["index"]}: {label} {dec["score"]:.3f}, box ({x1:.1f}, '
          f'{y1:.1f}, {x2:.1f}, {y2:.1f}); {shown["decoder"]}/{dec["weights"].numel()} '
          f'points inside the image')
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    main()
