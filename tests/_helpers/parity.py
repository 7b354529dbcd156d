"""The backbone's float64 parity with the authors' references (``tests/data/reference``): the model of the detection
reference and the relative errors of everything compared, shared by the CPU and the CUDA parity tests."""
import torch

from _helpers import rel_err
from mmoverlock.models import OverLoCK

#: Largest relative error of any compared quantity.
TOLERANCE = 1e-9
#: The detection form's modules that the plain form lacks (its level 3 adds ``h_proj(extra_norm[4](ctx))``).
FUSION_ONLY = ('h_proj.', 'extra_norm.4.')


def build_reference_model(ref, overview_fusion, memory_format='auto'):
    """The model of the detection reference, in the detection form or (``overview_fusion=False``) the plain form."""
    arch = {k: v for k, v in ref['arch'].items() if k != 'drop_path_rate'}
    model = OverLoCK(arch=arch, overview_fusion=overview_fusion, memory_format=memory_format).double()
    state_dict = ref['state_dict']
    if not overview_fusion:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(FUSION_ONLY)}
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def parity_errors(model, ref, input_format=torch.contiguous_format, check=lambda outputs: None):
    """Relative errors of every compared quantity (outputs, input and parameter gradients) over the cases."""
    errors = {}
    for idx, case in enumerate(ref['cases']):
        model.zero_grad()
        x = case['input'].clone().contiguous(memory_format=input_format).requires_grad_(True)
        outputs = model(x)
        assert len(outputs) == 4
        check(outputs)
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
    return errors
