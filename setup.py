"""Build and install mmoverlock, compiling the ContMix core into ``mmoverlock._ext``.

The C++ (CPU) kernels are always compiled. The CUDA kernels are compiled too when torch is a CUDA build and
``$CUDA_HOME`` is a toolkit root (``bin/nvcc`` and ``include/cuda_runtime.h``), or when ``FORCE_CUDA=1``;
``FORCE_CUDA=0`` disables them. Otherwise the build says in one line that it compiles the CPU kernels only.
Without a visible GPU the target architectures come from ``TORCH_CUDA_ARCH_LIST``, by default
``DEFAULT_CUDA_ARCH_LIST``: sm_80 (A100), sm_86 (A10, RTX 30xx), sm_89 (L4, L40, RTX 40xx), sm_90 (H100/H200) and
PTX of sm_90 that newer GPUs (Blackwell) compile at load time. ``MMOVERLOCK_NVCC_THREADS`` (default 4) lets nvcc
compile those targets of one file in parallel.
Set ``MMOVERLOCK_NO_EXT=1`` to skip the extension entirely (the pure-torch fallback is then used).
``MMOVERLOCK_BUILD_TESTING=1`` also builds ``mmoverlock._ext_testing``, the test-only CPU drivers of the CUDA kernels'
bodies (``csrc/testing/``, operators under ``torch.ops.mmoverlock_testing``), which a release build leaves out; the
test set-up (``tools/setup_env.sh``) sets it.

The requirements are read from ``requirements/*.txt``, the files ``tools/setup_env.sh`` installs: the extras ``mm``
and ``tests`` are the pins of the tested stack.
"""
import glob
import os
import os.path as osp

from setuptools import find_packages, setup

ROOT = osp.dirname(osp.abspath(__file__))
#: Targets of a build that sees no GPU: every current data-centre and desktop architecture, plus PTX for newer ones.
DEFAULT_CUDA_ARCH_LIST = '8.0;8.6;8.9;9.0+PTX'
CSRC = osp.join('mmoverlock', 'ops', 'csrc')


def get_version():
    scope = {}
    with open(osp.join(ROOT, 'mmoverlock', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


def parse_requirements(name):
    """The requirement lines of ``requirements/<name>.txt``, without comments and blank lines."""
    with open(osp.join(ROOT, 'requirements', f'{name}.txt')) as f:
        lines = (line.split('#', 1)[0].strip() for line in f)
        return [line for line in lines if line]


def find_nvcc(cuda_home):
    """Path of the toolkit's nvcc, or None when ``cuda_home`` is no CUDA toolkit root.

    A root has ``bin/nvcc`` and ``include/cuda_runtime.h``: a runtime-only install has no nvcc, and a folder that
    merely holds an nvcc wrapper script (torch guesses ``/usr/local`` from ``/usr/local/bin/nvcc``) has no headers or
    libraries to build and link against.
    """
    if cuda_home is None:
        return None
    nvcc = osp.join(cuda_home, 'bin', 'nvcc')
    headers = osp.join(cuda_home, 'include', 'cuda_runtime.h')
    return nvcc if osp.isfile(nvcc) and os.access(nvcc, os.X_OK) and osp.isfile(headers) else None


def want_cuda(torch, cuda_home):
    """Compile the CUDA kernels? ``FORCE_CUDA`` decides when set; otherwise a CUDA build of torch and a real nvcc."""
    force = os.getenv('FORCE_CUDA')
    if force is not None:
        return force == '1'
    if torch.version.cuda is None:
        print('mmoverlock: torch is a CPU build; compiling the CPU kernels only')
        return False
    if find_nvcc(cuda_home) is None:
        print(f'mmoverlock: no CUDA toolkit (bin/nvcc and include/cuda_runtime.h) under CUDA_HOME={cuda_home}; '
              'compiling the CPU kernels only (set CUDA_HOME to a toolkit root for the CUDA kernels)')
        return False
    return True


def testing_extension(CppExtension, include_dirs, cxx_flags):
    """``mmoverlock._ext_testing``: the drivers, with the host helpers they share with the operators (``*_op.cpp``,
    which register nothing, so both libraries can be loaded together)."""
    sources = sorted(glob.glob(osp.join(CSRC, 'testing', '*.cpp')) + glob.glob(osp.join(CSRC, '*_op.cpp')))
    return CppExtension('mmoverlock._ext_testing', sources, include_dirs=include_dirs,
                        extra_compile_args={'cxx': cxx_flags})


def get_extensions():
    if os.getenv('MMOVERLOCK_NO_EXT') == '1':
        return []
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    # The released library: the operators (csrc/*.cpp), the CPU kernels and, below, the CUDA kernels; never
    # csrc/testing/.
    sources = sorted(glob.glob(osp.join(CSRC, '*.cpp')) + glob.glob(osp.join(CSRC, 'cpu', '*.cpp')))
    include_dirs = [osp.join(ROOT, CSRC, 'common')]
    # -fopenmp: at::parallel_for is inline in ATen's headers and runs serially unless OpenMP is on; the library
    # links the libgomp.so.1 that torch already loaded. It also enables the `omp simd` reductions of the kernels.
    # -fno-trapping-math lets GCC if-convert (and so vectorise) the clamp in the CPU kernels' polynomial exp.
    cxx_flags = ['-O3', '-std=c++20', '-g0', '-fopenmp', '-fno-trapping-math']
    link_flags = ['-fopenmp']
    define_macros = []
    extensions = []
    if os.getenv('MMOVERLOCK_BUILD_TESTING') == '1':
        extensions.append(testing_extension(CppExtension, include_dirs, cxx_flags[:3]))
    if want_cuda(torch, CUDA_HOME):
        if find_nvcc(CUDA_HOME) is None:
            raise RuntimeError(f'FORCE_CUDA=1 but CUDA_HOME={CUDA_HOME} is no CUDA toolkit root (bin/nvcc and '
                               'include/cuda_runtime.h): set CUDA_HOME to the root of a CUDA toolkit.')
        if not torch.cuda.is_available() and not os.getenv('TORCH_CUDA_ARCH_LIST'):
            os.environ['TORCH_CUDA_ARCH_LIST'] = DEFAULT_CUDA_ARCH_LIST
        sources += sorted(glob.glob(osp.join(CSRC, 'cuda', '*.cu')))
        define_macros.append(('MMOVERLOCK_WITH_CUDA', None))
        nvcc_threads = os.getenv('MMOVERLOCK_NVCC_THREADS', '4')
        nvcc_flags = ['-O3', '-std=c++20', '--expt-relaxed-constexpr', '-lineinfo', f'--threads={nvcc_threads}']
        return [CUDAExtension('mmoverlock._ext', sources, include_dirs=include_dirs, define_macros=define_macros,
                              extra_compile_args={'cxx': cxx_flags, 'nvcc': nvcc_flags}, extra_link_args=link_flags)
                ] + extensions
    return [CppExtension('mmoverlock._ext', sources, include_dirs=include_dirs, define_macros=define_macros,
                         extra_compile_args={'cxx': cxx_flags}, extra_link_args=link_flags)] + extensions


def get_cmdclass():
    if os.getenv('MMOVERLOCK_NO_EXT') == '1':
        return {}
    from torch.utils.cpp_extension import BuildExtension
    return {'build_ext': BuildExtension.with_options(use_ninja=True)}


setup(
    name='mmoverlock',
    version=get_version(),
    description='OverLoCK (CVPR 2025) backbone for OpenMMLab 2.0: mmdet and mmseg, with a fused ContMix extension',
    long_description=open(osp.join(ROOT, 'README.md')).read() if osp.exists(osp.join(ROOT, 'README.md')) else '',
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    packages=find_packages(exclude=('tests', 'tests.*', 'configs', 'tools')),
    python_requires='>=3.9',
    install_requires=parse_requirements('runtime'),
    extras_require={'mm': parse_requirements('mminstall'), 'tests': parse_requirements('tests')},
    ext_modules=get_extensions(),
    cmdclass=get_cmdclass(),
    zip_safe=False,
)
