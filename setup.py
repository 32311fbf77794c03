"""Builds the ddetr package and its compiled op ``ddetr._C``.

Environment switches:
  DDETR_WITH_OPS=0       build no extension (ddetr then runs the pure-PyTorch op)
  FORCE_CUDA=1           compile the CUDA kernel even without a visible GPU
  TORCH_CUDA_ARCH_LIST   CUDA architectures to compile for (e.g. "9.0")
  CUDA_HOME              CUDA toolkit (defaults to /usr/local/cuda when it exists)
"""
import glob
import os
import os.path as osp
import sys

from setuptools import find_packages, setup

ROOT = osp.dirname(osp.abspath(__file__))
CSRC = osp.join('ddetr', 'ops', 'csrc')


def read_version():
    namespace = {}
    with open(osp.join(ROOT, 'ddetr', 'version.py')) as f:
        exec(f.read(), namespace)
    return namespace['__version__']


def say(msg):
    print(f'[ddetr build] {msg}', file=sys.stderr, flush=True)


def make_extensions():
    if os.environ.get('DDETR_WITH_OPS', '1') == '0':
        say('DDETR_WITH_OPS=0: no compiled op; ddetr will use the pure-PyTorch path')
        return [], {}
    # torch guesses CUDA_HOME=/usr/local when nvcc is not on PATH; the toolkit lives here.
    if 'CUDA_HOME' not in os.environ and osp.isdir('/usr/local/cuda'):
        os.environ['CUDA_HOME'] = '/usr/local/cuda'
    import torch
    from torch.utils import cpp_extension

    sources = sorted(glob.glob(osp.join(CSRC, '*.cpp')) +
                     glob.glob(osp.join(CSRC, '*', '*.cpp')))
    # -fopenmp makes at::parallel_for parallel; the extension then shares torch's libgomp.
    cxx_flags = ['-O3', '-std=c++20', '-fopenmp']
    define_macros = []
    include_dirs = [osp.join(ROOT, CSRC)]
    with_cuda = (torch.cuda.is_available() and cpp_extension.CUDA_HOME is not None) \
        or os.environ.get('FORCE_CUDA', '0') == '1'
    extension = cpp_extension.CppExtension
    extra = {'cxx': cxx_flags}
    if with_cuda:
        if cpp_extension.CUDA_HOME is None:
            raise RuntimeError('FORCE_CUDA=1 but no CUDA toolkit was found; set CUDA_HOME')
        extension = cpp_extension.CUDAExtension
        sources += sorted(glob.glob(osp.join(CSRC, '*', '*.cu')))
        define_macros.append(('DDETR_WITH_CUDA', None))
        extra['nvcc'] = ['-O3', '-std=c++20']
        # ATen's CUDA headers include cusparse.h / cublas_v2.h, which the pip wheels of
        # the CUDA libraries carry (not the toolkit).
        include_dirs += glob.glob(osp.join(osp.dirname(torch.__file__), '..', 'nvidia', '*',
                                           'include'))
        say(f'building the C++ CPU kernel and the CUDA kernel (CUDA_HOME='
            f'{cpp_extension.CUDA_HOME}, TORCH_CUDA_ARCH_LIST='
            f'{os.environ.get("TORCH_CUDA_ARCH_LIST", "<torch default>")})')
    else:
        say('building the C++ CPU kernel (no CUDA: no GPU visible and FORCE_CUDA unset)')
    ext = extension(
        name='ddetr._C',
        sources=sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=['-fopenmp'])
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=True)
    return [ext], {'build_ext': build_ext}


ext_modules, cmdclass = make_extensions()

setup(
    name='ddetr',
    version=read_version(),
    description='Deformable DETR, config-driven, in the style of MMDetection',
    packages=find_packages(exclude=('tests', 'tests.*', 'configs', 'tools')),
    package_data={'ddetr.ops': ['csrc/**/*']},
    python_requires='>=3.9',
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
