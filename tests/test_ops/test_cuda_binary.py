"""The built CUDA library itself, read with cuobjdump (no GPU needed): which GPU architectures it carries, and how
many calls of the 64-bit integer division routine its kernels make.

cuobjdump comes from the CUDA toolkit (``$CUDA_HOME/bin``, ``PATH``) or from triton's wheel, which bundles one. The
tests skip, with the reason, where the extension has no CUDA kernels or no cuobjdump is found.
"""
import os
import os.path as osp
import re
import shutil
import subprocess

import pytest
import torch

from mmoverlock.ops import available_backends

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def find_cuobjdump():
    candidates = [osp.join(os.environ['CUDA_HOME'], 'bin', 'cuobjdump')] if os.environ.get('CUDA_HOME') else []
    candidates.append(shutil.which('cuobjdump'))
    try:
        import triton
        candidates.append(osp.join(osp.dirname(triton.__file__), 'backends', 'nvidia', 'bin', 'cuobjdump'))
    except ImportError:
        pass
    return next((c for c in candidates if c and osp.isfile(c) and os.access(c, os.X_OK)), None)


def extension_path():
    from mmoverlock.ops import contmix
    return contmix._ext.__file__


CUOBJDUMP = find_cuobjdump()
pytestmark = [
    pytest.mark.skipif('cuda' not in available_backends(), reason='mmoverlock._ext was built without CUDA kernels'),
    pytest.mark.skipif(CUOBJDUMP is None, reason='no cuobjdump ($CUDA_HOME/bin, PATH or triton\'s wheel)'),
]


def cuobjdump(*args):
    return subprocess.run([CUOBJDUMP, *args, extension_path()], check=True, capture_output=True, text=True,
                          timeout=300).stdout


def default_arch_list():
    """setup.py's DEFAULT_CUDA_ARCH_LIST, read from the file (importing setup.py would run setup())."""
    with open(osp.join(REPO_ROOT, 'setup.py')) as f:
        return re.search(r"^DEFAULT_CUDA_ARCH_LIST = '([^']+)'", f.read(), re.M).group(1)


def expected_targets():
    """(ELF architectures, PTX architectures) the build was asked for, from the list setup.py and torch use."""
    arch_list = os.environ.get('TORCH_CUDA_ARCH_LIST')
    if not arch_list and torch.cuda.is_available():  # torch builds for the visible GPUs
        caps = {'{}{}'.format(*torch.cuda.get_device_capability(i)) for i in range(torch.cuda.device_count())}
        return caps, set()
    arch_list = arch_list or default_arch_list()
    elf, ptx = set(), set()
    for item in re.split(r'[;\s]+', arch_list.strip()):
        arch = item.replace('+PTX', '').replace('.', '')
        elf.add(arch)
        if item.endswith('+PTX'):
            ptx.add(arch)
    return elf, ptx


def embedded_elf_arches():
    """The architectures of the library's ELF (cubin) images, e.g. {'80', '90'}; fails showing cuobjdump's listing
    when it names none."""
    listing = cuobjdump('--list-elf')
    arches = set(re.findall(r'\.sm_(\d+a?)\.cubin', listing))
    assert arches, f'no sm_XX cubin in cuobjdump --list-elf of {extension_path()}:\n{listing[:2000]}'
    return arches


def test_library_embeds_the_requested_architectures():
    """Without a visible GPU: sm_80, 86, 89, 90 and PTX of sm_90 (setup.py's default), so the library runs on A100,
    A10/RTX 30xx, L4/L40/RTX 40xx, H100/H200 and, through the PTX, newer GPUs."""
    elf = embedded_elf_arches()
    ptx = set(re.findall(r'\.sm_(\d+a?)\.ptx', cuobjdump('--list-ptx')))
    want_elf, want_ptx = expected_targets()
    assert want_elf <= elf and want_ptx <= ptx, f'embedded ELF {sorted(elf)} PTX {sorted(ptx)}; ' \
                                                f'wanted ELF {sorted(want_elf)} PTX {sorted(want_ptx)}'


def division_calls(sass):
    """{kernel: calls of the 64-bit division routine} in cuobjdump's SASS of one architecture. The routine is a
    subroutine of each kernel (CALL.REL.NOINC to its address) whose body converts a 64-bit divisor to float for the
    reciprocal estimate (I2F.U64.RP), which 32-bit divisions, inlined, never do."""
    counts = {}
    for block in re.split(r'\n\s*Function : ', sass)[1:]:
        name = block.split('\n', 1)[0].strip()
        code = {int(a, 16): i.strip() for a, i in re.findall(r'/\*([0-9a-f]{4,})\*/\s+([^;/]*);', block)}
        addresses = sorted(code)

        def subroutine(start):
            body = []
            for a in addresses[addresses.index(start):] if start in code else []:
                body.append(code[a])
                if re.search(r'\bRET\b', code[a]):
                    break
            return body

        targets = [int(t, 16) for i in code.values() for t in re.findall(r'CALL\.REL\.NOINC\s+(0x[0-9a-f]+)', i)]
        counts[name] = sum(any('I2F.U64.RP' in i for i in subroutine(t)) for t in targets)
    return counts


#: Per (namespace, kernel), at most: ContMix's pixel plane and group (forward), the block's plane and the group
#: (backward), the plane row of the deterministic bias gather's first step; the depthwise conv's image of an output
#: element (forward; the weight gradient loops over images). None per tap. Measured with nvcc 13, sm_90: 2, 2, 1, 0,
#: 1, 0 (they were 20 in ContMix's forward_kernel<float, 4> with a 64-bit tap index, and 11 and 21 in the depthwise
#: kernels with 64-bit element indexing).
MAX_DIVISIONS = {('contmix', 'forward_kernel'): 2, ('contmix', 'backward_kernel'): 2,
                 ('contmix', 'bias_rows_kernel'): 1, ('contmix', 'bias_grad_kernel'): 0,
                 ('depthwise', 'forward_kernel'): 1, ('depthwise', 'grad_weight_kernel'): 0}
#: The mangled namespaces mmoverlock::contmix and mmoverlock::depthwise.
MANGLED = {'contmix': 'mmoverlock7contmix', 'depthwise': 'mmoverlock9depthwise'}


def test_hot_kernels_make_no_per_tap_64bit_divisions():
    """The kernels of both ops, by namespace (their kernel names overlap)."""
    newest = max(embedded_elf_arches(), key=lambda arch: (int(arch.rstrip('a')), arch))
    counts = division_calls(cuobjdump('--dump-sass', '-arch', f'sm_{newest}'))
    found = {(ns, kind): {n: c for n, c in counts.items() if MANGLED[ns] in n and f'{len(kind)}{kind}I' in n}
             for ns, kind in MAX_DIVISIONS}
    assert all(found.values()), f'kernels not found in the SASS: {[k for k, v in found.items() if not v]}'
    too_many = {n: c for key, per in found.items() for n, c in per.items() if c > MAX_DIVISIONS[key]}
    print({key: sorted(set(per.values())) for key, per in found.items()})
    assert not too_many, f'64-bit division calls above {MAX_DIVISIONS}: {too_many}'
