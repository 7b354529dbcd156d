"""Write the compact parity references (``tests/data/reference/tiny_references.pt.xz``) from the authors' originals.

The originals (``tiny_detection.pt``, ``tiny_segmentation.pt``, ``tiny_classification.pt``: 61 MB of float64, see
their README) are too large to track. Their numbers are random float64 with full mantissas, so no lossless coding
gets far; what the tests need is less than what the files hold:

* **Fewer tensors.** Detection keeps all three cases (case 0 with every parameter's gradient); the classifier
  keeps its eval case (logits, input gradient, deploy logits) and its train case. Dropped: the classifier's
  parameter gradients (every backbone parameter's gradient is compared in detection case 0) and the whole
  segmentation file. Its random weights differ from the detection file's, and the plain form it checks computes
  levels 0-2 exactly as the detection form does (level 3 only lacks the ``h_proj`` term), so the plain form is
  compared with the detection reference on those levels instead.
* **Fixed point below the tolerance.** The parity tests compare ``max |a - b| / max |b|`` with 1e-9. Each float
  tensor is stored as integers ``round(x / max|x| * 2**bits)`` with its ``max|x|`` as a Python float (float64), so
  the decoded value is off by at most ``2**-(bits + 1)`` of the tensor's maximum:
  ``INPUT_BITS`` (44: 2.8e-14) for what the model and the loss consume (weights, inputs, output weights), and
  ``EXPECTED_BITS`` (34: 2.9e-11, 1/34 of the tolerance) for the expected outputs and gradients.
* **Shared weights once.** The classifier's state dict repeats the detection model's tensors wherever the forms
  share a module; those entries are stored as ``{'same_as': 'detection'}``.
* **Compressed.** The integers are stored as byte planes (most significant bytes together), and the whole
  ``torch.save`` file is xz-compressed.

``tests/_helpers/reference_data.py`` decodes the file back into the originals' layout. After writing, this script
decodes it and prints every tensor's worst error relative to its maximum against the bound.

Usage: python tools/misc/shrink_reference.py --src /path/to/original/reference [--out tests/data/reference]
"""
import argparse
import io
import lzma
import os.path as osp

import torch

FORMAT = 'mmoverlock-reference-fixed-point-v1'
INPUT_BITS = 44
EXPECTED_BITS = 34
OUT_NAME = 'tiny_references.pt.xz'

# What each kept case's tensors are: inputs of the computation (INPUT_BITS) or expected results (EXPECTED_BITS).
INPUT_KEYS = {'state_dict', 'input', 'out_weights', 'out_weight', 'main_weight', 'aux_weight'}


def encode_tensor(t: torch.Tensor, bits: int):
    """A float tensor as fixed-point byte planes relative to its maximum; other tensors unchanged."""
    if not t.is_floating_point():
        return t.clone()
    t = t.detach().double().contiguous()
    scale = float(t.abs().max()) if t.numel() else 0.0
    q = torch.round(t / scale * 2.0**bits).to(torch.int64) if scale > 0 else torch.zeros_like(t, dtype=torch.int64)
    planes = q.view(-1).view(torch.uint8).view(-1, 8).t().contiguous()  # [8, n]: byte k of every integer together
    return {'fixed': planes, 'shape': list(t.shape), 'scale': scale, 'bits': bits}


def encode(obj, bits: int, key: str = ''):
    """Encode nested dicts/lists of tensors; a key in INPUT_KEYS switches its subtree to INPUT_BITS."""
    if key in INPUT_KEYS:
        bits = INPUT_BITS
    if isinstance(obj, torch.Tensor):
        return encode_tensor(obj, bits)
    if isinstance(obj, dict):
        return {k: encode(v, bits, k) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [encode(v, bits, key) for v in obj]
    return obj


def select(det, cls):
    """The kept subset of the three originals (see the module docstring)."""
    eval_case = {k: v for k, v in cls['eval_case'].items() if k != 'param_grads'}
    classification = dict(arch=cls['arch'], num_classes=cls['num_classes'], projection=cls['projection'],
                          state_dict=cls['state_dict'], eval_case=eval_case, train_case=cls['train_case'],
                          deploy_logits=cls['deploy_logits'])
    return dict(detection=det, classification=classification)


def compact(refs):
    encoded = {name: encode(ref, EXPECTED_BITS) for name, ref in refs.items()}
    shared_from = refs['detection']['state_dict']
    cls_sd = refs['classification']['state_dict']
    encoded['classification']['state_dict'] = {
        k: {'same_as': 'detection'} if k in shared_from and torch.equal(v, shared_from[k]) else
        encoded['classification']['state_dict'][k]
        for k, v in cls_sd.items()
    }
    return dict(format=FORMAT, **encoded)


def worst_errors(original, decoded, path=''):
    """(path, error relative to the tensor's max, bits) for every float tensor, recursively."""
    if isinstance(original, torch.Tensor):
        if not original.is_floating_point():
            assert torch.equal(original, decoded), path
            return []
        scale = original.abs().max()
        err = ((decoded - original).abs().max() / scale).item() if scale > 0 else 0.0
        return [(path, err)]
    if isinstance(original, dict):
        return [e for k in original for e in worst_errors(original[k], decoded[k], f'{path}/{k}')]
    if isinstance(original, (list, tuple)):
        return [e for i, v in enumerate(original) for e in worst_errors(v, decoded[i], f'{path}/{i}')]
    return []


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--src', required=True, help='folder with the original tiny_*.pt files')
    parser.add_argument('--out', default=osp.join('tests', 'data', 'reference'), help='output folder')
    args = parser.parse_args()
    load = (lambda name: torch.load(osp.join(args.src, f'tiny_{name}.pt'), weights_only=True))
    refs = select(load('detection'), load('classification'))
    buffer = io.BytesIO()
    torch.save(compact(refs), buffer)
    out = osp.join(args.out, OUT_NAME)
    with open(out, 'wb') as f:
        f.write(lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME))
    print(f'{out}: {osp.getsize(out)} bytes')

    import sys
    sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'tests'))
    from _helpers.reference_data import load_reference
    for name, ref in refs.items():
        errors = worst_errors(ref, load_reference(args.out, name))
        for kind, bits in (('inputs', INPUT_BITS), ('expected', EXPECTED_BITS)):
            mine = [e for p, e in errors if bool(INPUT_KEYS & set(p.split('/'))) == (kind == 'inputs')]
            print(f'{name} {kind}: {len(mine)} tensors, worst error {max(mine):.2e} of max '
                  f'(bound 2**-{bits + 1} = {2.0**-(bits + 1):.2e})')
            assert max(mine) <= 2.0**-(bits + 1) + 2.0**-50  # plus float64 rounding of x / max|x|


if __name__ == '__main__':
    main()
