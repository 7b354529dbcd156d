"""Parity with the authors' implementation: float64 outputs and gradients from tests/data/reference (1e-9 relative).

The detection form is compared on all three reference cases (outputs, input gradients, every parameter's gradient in
case 0, deploy outputs). The plain (segmentation) form computes levels 0-2 exactly as the detection form does, so it
is compared with the detection reference on those levels, with the detection weights less ``h_proj`` and
``extra_norm[4]``. A planted perturbation far below any visible change must fail the same checks.
"""
import pytest
import torch

from _helpers import rel_err
from _helpers.parity import FUSION_ONLY, TOLERANCE, build_reference_model, parity_errors
from _helpers.reference_data import load_reference
from mmoverlock.ops import available_backends
from mmoverlock.ops.contmix import BACKEND_ENV

@pytest.fixture(scope='module')
def detection(reference_dir):
    return load_reference(reference_dir, 'detection')


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
def test_outputs_and_gradients_match_authors(detection, backend, layout, monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, backend)  # every ContMix core of the model runs on this backend
    memory_format, input_format = LAYOUTS[layout]
    model = build_reference_model(detection, True, memory_format)
    errors = parity_errors(model, detection, input_format, lambda outputs: check_layout(outputs, memory_format))
    print(f'detection [{backend}, {layout}]: ' + ', '.join(f'{k}={v:.2e}' for k, v in errors.items()))
    bad = {k: v for k, v in errors.items() if not v <= TOLERANCE}
    assert not bad, f'relative errors above {TOLERANCE}: {bad}'


@pytest.mark.parametrize('deploy', [False, True], ids=['train', 'deploy'])
@pytest.mark.parametrize('layout', list(LAYOUTS))
def test_plain_form_levels_0_to_2_match_authors(detection, layout, deploy):
    memory_format, input_format = LAYOUTS[layout]
    model = build_reference_model(detection, False, memory_format)
    assert not any(k.startswith(FUSION_ONLY) for k in model.state_dict())
    if deploy:
        model = model.switch_to_deploy()
    expected = detection['reparam_outputs'] if deploy else [case['outputs'] for case in detection['cases']]
    with torch.no_grad():
        for idx, case in enumerate(detection['cases']):
            outputs = model(case['input'].contiguous(memory_format=input_format))
            check_layout(outputs, memory_format)
            for level in range(3):
                err = rel_err(outputs[level], expected[idx][level])
                assert err <= TOLERANCE, f'case {idx} level {level}: relative error {err:.2e}'


@pytest.mark.parametrize('layout', list(LAYOUTS))
def test_switch_to_deploy_matches_authors(detection, layout):
    memory_format, input_format = LAYOUTS[layout]
    model = build_reference_model(detection, True, memory_format).switch_to_deploy()
    assert not any('origin_bn' in k for k in model.state_dict())
    with torch.no_grad():
        for idx, case in enumerate(detection['cases']):
            outputs = model(case['input'].contiguous(memory_format=input_format))
            check_layout(outputs, memory_format)
            for level, (out, expected) in enumerate(zip(outputs, detection['reparam_outputs'][idx])):
                err = rel_err(out, expected)
                assert err <= TOLERANCE, f'case {idx} level {level}: relative error {err:.2e}'


@pytest.mark.parametrize('planted', ['running_var', 'rpb'])
def test_a_planted_perturbation_fails_parity(detection, planted):
    """The compact reference still tells the model apart from one with a single number slightly off: the first BN
    variance of the stem by 1e-7 relative, or the centre entry (a pixel's own tap) of a ContMix block's position
    bias by 1e-5 relative (one logit of each pixel moves by ~1e-6)."""
    model = build_reference_model(detection, True)
    with torch.no_grad():
        if planted == 'running_var':
            model.patch_embed1[1].running_var[0] *= 1 + 1e-7
        else:
            table = model.sub_blocks3[0].rpb1
            table[0, table.shape[1] // 2, table.shape[2] // 2] *= 1 + 1e-5
    errors = parity_errors(model, {'cases': detection['cases'][:1]})
    assert max(errors.values()) > TOLERANCE, errors
