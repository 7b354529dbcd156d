"""Eval-mode folds reused between calls without a gradient: the same outputs as folding on every call, and never a
stale fold after the parameters change in any of the ways that training, loading or mmengine's hooks change them."""
import copy

import pytest
import torch

from _helpers import TINY_ARCH
from mmoverlock.models import OverLoCK, OverLoCKClassifier
from mmoverlock.models import fold_cache


def _model(seed=0, **kwargs):
    torch.manual_seed(seed)
    model = OverLoCK(arch=TINY_ARCH, overview_fusion=True, **kwargs)
    model.init_weights()
    with torch.no_grad():  # BatchNorms with statistics of their own, so that every fold matters
        for name, buffer in model.named_buffers():
            if name.endswith('running_mean'):
                buffer.normal_(0, 0.1)
            elif name.endswith('running_var'):
                buffer.uniform_(0.5, 2)
    return model.double().eval()


def _image(seed=1):
    return torch.randn(1, 3, 64, 72, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _folded_every_call(model, x):
    with torch.enable_grad():  # a gradient may be wanted: every fold is computed afresh
        return [out.detach() for out in model(x)]


def _assert_same(outs, refs):
    for out, ref in zip(outs, refs):
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def _kept_folds(model):
    return sum(len(fold_cache._FOLDS.get(m, {})) for m in model.modules())


@pytest.mark.parametrize('deploy', [False, True], ids=['eval', 'deploy'])
def test_reused_folds_give_the_outputs_of_folding_every_call(deploy):
    model = _model()
    if deploy:
        model.switch_to_deploy()
    x = _image()
    with torch.no_grad():
        first = model(x)
        assert _kept_folds(model) > 0
        second = model(x)
    with torch.inference_mode():
        third = model(x)
    reference = _folded_every_call(model, x)
    for outs in (first, second, third):
        _assert_same(outs, reference)


def test_no_fold_is_kept_with_a_gradient_or_in_training():
    model = _model()
    _folded_every_call(model, _image())
    assert _kept_folds(model) == 0
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64, dtype=torch.float64))
    assert _kept_folds(model) == 0


def test_changed_parameters_are_folded_again():
    model, other = _model(0), _model(1)
    x = _image()
    with torch.no_grad():
        model(x)
    # load_state_dict (in-place copies: new versions)
    model.load_state_dict(other.state_dict())
    with torch.no_grad():
        _assert_same(model(x), _folded_every_call(other, x))
    # an optimizer step (in place under no_grad), on a conv and on a BatchNorm buffer
    with torch.no_grad():
        model.patch_embed2[0].weight.mul_(1.5)
        model.blocks1[0].proj[2].running_var.add_(0.5)
        outs = model(x)
    _assert_same(outs, _folded_every_call(model, x))
    # a replaced parameter, and a dtype change (new storage)
    model.patch_embed3[0].weight = torch.nn.Parameter(model.patch_embed3[0].weight.detach() * 0.5)
    model.float()
    with torch.no_grad():
        outs = model(x.float())
    torch.testing.assert_close(outs, _folded_every_call(model, x.float()))


def test_weights_swapped_through_data_are_folded_again_after_eval():
    """mmengine's EMAHook swaps weights with ``p.data.copy_`` (no version bump) before the loop calls eval()."""
    model, ema = _model(0), _model(1)
    x = _image()
    with torch.no_grad():
        model(x)
    for p, q in zip(model.parameters(), ema.parameters()):
        p.data.copy_(q.data)
    for b, c in zip(model.buffers(), ema.buffers()):
        b.data.copy_(c.data)
    model.eval()
    with torch.no_grad():
        _assert_same(model(x), _folded_every_call(ema, x))


def test_copies_fold_for_themselves():
    model = _model()
    x = _image()
    with torch.no_grad():
        model(x)
        twin = copy.deepcopy(model)
        twin.patch_embed2[0].weight.mul_(2)
        _assert_same(model(x), _folded_every_call(model, x))
        _assert_same(twin(x), _folded_every_call(twin, x))


def test_classifier_reuses_folds_too():
    torch.manual_seed(0)
    model = OverLoCKClassifier(arch=TINY_ARCH, num_classes=5).double().eval()
    x = _image()
    with torch.no_grad():
        model(x)
        assert _kept_folds(model) > 0
        out = model(x)
    with torch.enable_grad():
        reference = model(x).detach()
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-12)
