"""The detector on a GPU (CUDA kernel) gives its CPU outputs (C++ kernel), for every
Table 1 variant. Skipped without a GPU; nothing touches CUDA at import."""
import pytest
import torch

SHAPES = [((96, 80), [[10, 12, 50, 70]], [1]), ((64, 112), [[20, 10, 100, 60]], [4])]


@pytest.fixture
def no_tf32():
    """Full float32 convolutions and matmuls on the GPU (cuDNN defaults to TF32 on Ampere and
    later, a 10-bit mantissa): the comparison is of kernels, not of precision settings."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize('variant', ['base', 'refine', 'twostage'])
def test_cuda_forward_equals_cpu_forward(variant, build_detector, batch_of, no_tf32):
    if not torch.cuda.is_available():
        pytest.skip('needs a CUDA GPU')
    torch.manual_seed(0)
    model = build_detector(variant).eval()
    inputs, samples = batch_of(model, SHAPES, training=False)
    with torch.no_grad():
        cpu_outputs = model._forward(inputs, samples)
        cuda_outputs = model.cuda()._forward(inputs.cuda(), samples)
    cpu_flat = [t for t in torch.utils._pytree.tree_leaves(cpu_outputs)
                if isinstance(t, torch.Tensor)]
    cuda_flat = [t for t in torch.utils._pytree.tree_leaves(cuda_outputs)
                 if isinstance(t, torch.Tensor)]
    assert len(cpu_flat) == len(cuda_flat) > 0
    for cpu, cuda in zip(cpu_flat, cuda_flat):
        torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-4, atol=1e-4)
