"""Read the compact parity references (``tests/data/reference/tiny_references.pt.xz``, written by
``tools/misc/shrink_reference.py``) back into the layout of the authors' original files.

A float tensor is stored as fixed-point integers relative to its maximum, split into byte planes:
``{'fixed': uint8 [8, n], 'shape': [...], 'scale': max|x|, 'bits': b}`` decodes to ``int64 * scale / 2**b`` in
float64. A classifier state-dict entry ``{'same_as': 'detection'}`` is the detection model's tensor of that name.
"""
import functools
import io
import lzma
import os.path as osp

import torch

FILE_NAME = 'tiny_references.pt.xz'
FORMAT = 'mmoverlock-reference-fixed-point-v1'


def _decode(obj):
    if isinstance(obj, dict) and 'fixed' in obj:
        q = obj['fixed'].t().contiguous().view(torch.int64).view(obj['shape'])
        return q.double() * (obj['scale'] / 2.0**obj['bits'])
    if isinstance(obj, dict):
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


@functools.lru_cache(maxsize=2)
def _load_file(path):
    with lzma.open(path, 'rb') as f:
        data = torch.load(io.BytesIO(f.read()), weights_only=True)
    if data.get('format') != FORMAT:
        raise ValueError(f'{path}: format {data.get("format")!r}, expected {FORMAT!r} '
                         '(rewrite it with tools/misc/shrink_reference.py)')
    return data


def load_reference(reference_dir, name):
    """The reference ``name`` ('detection' or 'classification') as a fresh dict of float64
    tensors, laid out as in the original ``tiny_<name>.pt`` (what tools/misc/shrink_reference.py keeps of it)."""
    data = _load_file(osp.join(reference_dir, FILE_NAME))
    if name not in data or name == 'format':
        raise KeyError(f'no reference {name!r} in {FILE_NAME}; have {sorted(k for k in data if k != "format")}')
    ref = _decode(data[name])
    for key, entry in ref['state_dict'].items():
        if isinstance(entry, dict) and 'same_as' in entry:
            ref['state_dict'][key] = _decode(data[entry['same_as']]['state_dict'][key])
    return ref
