"""Parity with the authors' implementation: float64 outputs and gradients from tests/data/reference (1e-9 relative)."""
import os.path as osp

import pytest
import torch

from _helpers import rel_err
from mmoverlock.models import OverLoCK
from mmoverlock.ops import available_backends
from mmoverlock.ops.contmix import BACKEND_ENV

TOLERANCE = 1e-9


def load_case_file(reference_dir, name):
    return torch.load(osp.join(reference_dir, f'tiny_{name}.pt'), weights_only=True)


def build_reference_model(ref, overview_fusion, memory_format='auto'):
    arch = {k: v for k, v in ref['arch'].items() if k != 'drop_path_rate'}
    model = OverLoCK(arch=arch, overview_fusion=overview_fusion, memory_format=memory_format).double()
    model.load_state_dict(ref['state_dict'], strict=True)
    return model.eval()


# (memory format the model runs in, layout of the input): the default (channels-last on the CPU) from an NCHW input,
# and NCHW from a channels-last input. The ContMix backend does not depend on the layout: the pure-torch one runs once.
LAYOUTS = {'channels_last': ('auto', torch.contiguous_format), 'nchw': ('contiguous', torch.channels_last)}
BACKEND_LAYOUTS = [(b, layout) for b in available_backends() if b != 'cuda'  # CPU tensors
                   for layout in LAYOUTS if b != 'torch' or layout == 'channels_last']


def check_layout(outputs, memory_format):
    channels_last = memory_format == 'auto'  # on the CPU
    for out in outputs:
        assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.parametrize('backend,layout', BACKEND_LAYOUTS)
@pytest.mark.parametrize('name,overview_fusion', [('detection', True), ('segmentation', False)])
def test_outputs_and_gradients_match_authors(reference_dir, name, overview_fusion, backend, layout, monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, backend)  # every ContMix core of the model runs on this backend
    memory_format, input_format = LAYOUTS[layout]
    ref = load_case_file(reference_dir, name)
    model = build_reference_model(ref, overview_fusion, memory_format)
    errors = {}
    for idx, case in enumerate(ref['cases']):
        model.zero_grad()
        x = case['input'].clone().contiguous(memory_format=input_format).requires_grad_(True)
        outputs = model(x)
        assert len(outputs) == 4
        check_layout(outputs, memory_format)
        loss = sum((out * w).sum() for out, w in zip(outputs, case['out_weights']))
        loss.backward()
        for level, (out, expected) in enumerate(zip(outputs, case['outputs'])):
            assert out.shape == expected.shape
            errors[f'case{idx}/level{level}'] = rel_err(out.detach(), expected)
        errors[f'case{idx}/input_grad'] = rel_err(x.grad, case['input_grad'])
        if case.get('param_grads'):
            params = dict(model.named_parameters())
            assert set(case['param_grads']) == set(params)
            nonzero = {k: g for k, g in case['param_grads'].items() if g.abs().max() > 0}
            errors[f'case{idx}/param_grads'] = max(rel_err(params[k].grad, g) for k, g in nonzero.items())
            for k in set(case['param_grads']) - set(nonzero):  # zero in the reference: must be zero here too
                assert params[k].grad.abs().max() <= 1e-12, k
    print(f'{name} [{backend}, {layout}]: ' + ', '.join(f'{k}={v:.2e}' for k, v in errors.items()))
    bad = {k: v for k, v in errors.items() if not v <= TOLERANCE}
    assert not bad, f'relative errors above {TOLERANCE}: {bad}'


@pytest.mark.parametrize('layout', list(LAYOUTS))
@pytest.mark.parametrize('name,overview_fusion', [('detection', True), ('segmentation', False)])
def test_switch_to_deploy_matches_authors(reference_dir, name, overview_fusion, layout):
    memory_format, input_format = LAYOUTS[layout]
    ref = load_case_file(reference_dir, name)
    model = build_reference_model(ref, overview_fusion, memory_format).switch_to_deploy()
    assert not any('origin_bn' in k for k in model.state_dict())
    with torch.no_grad():
        for idx, case in enumerate(ref['cases']):
            outputs = model(case['input'].contiguous(memory_format=input_format))
            check_layout(outputs, memory_format)
            for level, (out, expected) in enumerate(zip(outputs, ref['reparam_outputs'][idx])):
                err = rel_err(out, expected)
                assert err <= TOLERANCE, f'case {idx} level {level}: relative error {err:.2e}'
