"""A built ddetr detector written to an ONNX file: the graph (``ONNXDetector`` traced), its
input size, and the metadata that lets a runtime prepare images without the training stack.

Two exports (``docs/deployment.md``):

- static: one input, MMDeploy's ``input`` (1, 3, H, W); every pixel counts as image;
- dynamic: ``input`` (N, 3, H, W) with N, H, W free axes and ``img_shape`` (N, 2) int64,
  each image's valid (height, width) in the padded batch, from which the graph builds
  the padding mask and the valid ratios as ddetr's PyTorch forward does.

Both give ``dets`` (N, max_per_img, 5) and ``labels`` (N, max_per_img).
"""
import json
import warnings
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from ddetr.errors import ConfigError

from .onnx_wrapper import ONNXDetector

__all__ = ['MIN_OPSET', 'STATIC_INPUTS', 'DYNAMIC_INPUTS', 'OUTPUTS', 'export_onnx',
           'exact_nearest_resize',
           'metadata', 'default_shape', 'resize_step', 'check_two_stage_shape']

MIN_OPSET = 16  # GridSample
STATIC_INPUTS = ('input',)
DYNAMIC_INPUTS = ('input', 'img_shape')
OUTPUTS = ('dets', 'labels')
METADATA_FORMAT = '2'  # 2: the dynamic export has a batch axis and the img_shape input


def resize_step(cfg) -> Optional[dict]:
    """The test pipeline's Resize step as ``dict(scale=(w, h), keep_ratio)`` (None when it
    has none)."""
    from ddetr.apis import build_test_pipeline
    for step in build_test_pipeline(cfg).transforms:
        if type(step).__name__ == 'Resize':
            return dict(scale=tuple(step.scale) if step.scale else None,
                        keep_ratio=bool(step.keep_ratio))
    return None


def default_shape(cfg) -> Tuple[int, int]:
    """(H, W) large enough for any image out of the test pipeline's Resize."""
    resize = resize_step(cfg)
    if resize is None or resize['scale'] is None:
        raise ConfigError(f'config {cfg.filename}: the test pipeline has no Resize with a '
                          f'scale to take the input size from; give it with --shape H W')
    w, h = resize['scale']  # mmcv's (w, h)
    if resize['keep_ratio']:  # the long side fits max(scale), the short side min(scale)
        side = max(w, h)
        return side, side
    return h, w


def check_two_stage_shape(model: nn.Module, shape: Tuple[int, int]) -> None:
    """Two-stage picks ``num_queries`` proposals among the encoder's pixels (levels at
    strides 8, 16, 32 and 64 at most): refuse an input too small to have that many."""
    if not getattr(model, 'as_two_stage', False):
        return
    strides = [8 * 2 ** level for level in range(model.num_feature_levels)]
    num_keys = sum(-(-shape[0] // s) * -(-shape[1] // s) for s in strides)
    if num_keys < model.num_queries:
        raise ConfigError(f'input {shape[0]}x{shape[1]} gives the encoder {num_keys} pixels, '
                          f'fewer than the {model.num_queries} two-stage proposals '
                          f'(model.num_queries); use a larger --shape')


def metadata(model: nn.Module, shape: Tuple[int, int], dynamic: bool) -> Dict[str, str]:
    """What a runtime (tools/deployment/onnx_demo.py) needs to prepare images and name the
    classes, as JSON strings: the data preprocessor's mean, std, channel order, padding
    value and size divisor, the test pipeline's Resize, the class names, the exported
    (or, dynamic, the traced) input size and the input names."""
    pre = model.data_preprocessor
    mean = pre.mean.flatten().tolist() if getattr(pre, 'mean', None) is not None else [0.0] * 3
    std = pre.std.flatten().tolist() if getattr(pre, 'std', None) is not None else [1.0] * 3
    return dict(
        ddetr_format=METADATA_FORMAT, mean=json.dumps(mean), std=json.dumps(std),
        bgr_to_rgb=json.dumps(bool(getattr(pre, '_channel_conversion', False))),
        input_shape=json.dumps(list(shape)), dynamic=json.dumps(dynamic),
        inputs=json.dumps(list(DYNAMIC_INPUTS if dynamic else STATIC_INPUTS)),
        resize=json.dumps(resize_step(model.cfg)),
        classes=json.dumps(list(model.dataset_meta['classes'])),
        pad_value=json.dumps(float(getattr(pre, 'pad_value', 0))),
        pad_size_divisor=json.dumps(int(getattr(pre, 'pad_size_divisor', 1))))


def exact_nearest_resize(proto) -> int:
    """Replace each nearest Resize to given sizes (what ``F.interpolate(x, size=...)``
    exports: 'asymmetric' coordinates, 'floor' rounding) in ``proto``'s graph by index
    arithmetic that rounds as PyTorch does; returns how many were replaced.

    The detector resizes its padding mask to every feature level with
    ``F.interpolate(mode='nearest', size=...)``. PyTorch takes source row
    ``floor(dst * float32(in / out))``, ONNX Resize computes ``dst / float32(out / in)``:
    1 / float32(5 / 35) is 6.99..., not 7, so at sizes like these a level's mask would be
    one row off at the image's border in onnxruntime (105 of the level sizes of inputs
    33..300 px). Here each spatial axis becomes ``Gather(x, min(Cast(Floor(Cast(Range(
    out)) * (Cast(in) / Cast(out)))), in - 1))`` in float32, PyTorch's own formula."""
    from onnx import helper
    graph = proto.graph
    nodes, replaced = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type == 'Resize' and attrs.get('mode') == b'nearest'
                and attrs.get('coordinate_transformation_mode') == b'asymmetric'
                and attrs.get('nearest_mode') == b'floor' and 'axes' not in attrs
                and len(node.input) == 4 and node.input[3]):
            nodes += _nearest_as_pytorch(node.input[0], node.input[3], node.output[0],
                                         f'ddetr_exact_nearest_{replaced}')
            replaced += 1
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return replaced


def _nearest_as_pytorch(x: str, sizes: str, output: str, prefix: str) -> list:
    """Nodes computing ``output`` = ``x`` (N, C, H, W) resized (nearest) to ``sizes`` (4,)
    by PyTorch's index formula, each spatial axis a Gather."""
    from onnx import TensorProto, helper
    nodes = []

    def op(kind, inputs, what, **attrs):
        nodes.append(helper.make_node(kind, inputs, [f'{prefix}/{what}'],
                                      name=f'{prefix}/{what}', **attrs))
        return f'{prefix}/{what}'

    def const(what, value):
        return op('Constant', [], what,
                  value=helper.make_tensor(f'{prefix}/{what}', TensorProto.INT64, [], [value]))

    shape = op('Shape', [x], 'shape')
    zero, one = const('zero', 0), const('one', 1)
    for axis in (2, 3):
        axis_index = const(f'axis{axis}', axis)
        size_in = op('Gather', [shape, axis_index], f'in{axis}')
        size_out = op('Gather', [sizes, axis_index], f'out{axis}')
        # float32(in) / float32(out), as PyTorch's compute_scales_value
        scale = op('Div', [op('Cast', [size_in], f'in{axis}_f', to=TensorProto.FLOAT),
                           op('Cast', [size_out], f'out{axis}_f', to=TensorProto.FLOAT)],
                   f'scale{axis}')
        dst = op('Cast', [op('Range', [zero, size_out, one], f'dst{axis}')], f'dst{axis}_f',
                 to=TensorProto.FLOAT)
        # min(floor(dst * scale), in - 1)
        src = op('Cast', [op('Floor', [op('Mul', [dst, scale], f'src{axis}_f')],
                             f'floor{axis}')], f'src{axis}', to=TensorProto.INT64)
        index = op('Min', [src, op('Sub', [size_in, one], f'last{axis}')], f'index{axis}')
        x = op('Gather', [x, index], f'gather{axis}', axis=axis)
    nodes.append(helper.make_node('Identity', [x], [output], name=f'{prefix}/output'))
    return nodes


def export_onnx(model: nn.Module, out: str, shape: Tuple[int, int], dynamic: bool = False,
                opset: int = 17) -> None:
    """Trace ``ONNXDetector(model)`` and write ``out``, checked by ``onnx.checker``, with
    :func:`metadata` in its metadata_props.

    Static: traced on a (1, 3, H, W) input, ``shape`` = (H, W). Dynamic: traced on a padded
    batch of two at ``shape`` (the second image smaller, so the trace sees padding), with
    the batch, height and width as free axes. The deformable attention is traced through
    its grid_sample path (``msda_backend('pytorch')``; ONNX GridSample, opset >= 16), and
    the model's CPU fast paths are off (``ddetr.models.fast_paths.disabled()``): the graph
    is the plain formulation, and the FFN's chunks of 4096 tokens, whose number the tracer
    would fix at the example's size, do not cut a larger input short.

    The TorchScript exporter (``dynamo=False``) is used: torch 2.14's dynamo exporter
    needs onnxscript (not a dependency) and would have to trace data-dependent level
    loops symbolically; the tracer keeps the sizes symbolic through ``level_shapes``.
    """
    import onnx

    from ddetr.models import fast_paths
    from ddetr.ops import msda_backend
    if opset < MIN_OPSET:
        raise ConfigError(f'opset {opset}: the deformable attention needs GridSample, opset '
                          f'{MIN_OPSET} or newer')
    wrapper = ONNXDetector(model).eval()
    height, width = shape
    if dynamic:
        example = (torch.zeros(2, 3, height, width),
                   torch.tensor([[height, width], [height - height // 4, width - width // 4]]))
        batch = {0: 'batch'}
        dynamic_axes = dict(input={0: 'batch', 2: 'height', 3: 'width'}, img_shape=batch,
                            dets=batch, labels=batch)
        input_names = DYNAMIC_INPUTS
    else:
        example = (torch.zeros(1, 3, height, width),)
        dynamic_axes, input_names = None, STATIC_INPUTS
    with (torch.no_grad(), msda_backend('pytorch'), fast_paths.disabled(),
          warnings.catch_warnings()):
        # the tracer's notes on shape-dependent Python values; the dynamic case is tested
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
        warnings.filterwarnings('ignore', message='.*legacy TorchScript-based ONNX export')
        warnings.filterwarnings('ignore', message='Constant folding - Only steps=1')
        warnings.filterwarnings('ignore', category=DeprecationWarning,
                                message='The feature will be removed')
        torch.onnx.export(wrapper, example, out, input_names=list(input_names),
                          output_names=list(OUTPUTS), opset_version=opset,
                          dynamic_axes=dynamic_axes, dynamo=False, do_constant_folding=True)
    proto = onnx.load(out)
    exact_nearest_resize(proto)
    onnx.checker.check_model(proto)
    del proto.metadata_props[:]
    for key, value in metadata(model, shape, dynamic).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, out)
