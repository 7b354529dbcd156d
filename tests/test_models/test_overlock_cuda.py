"""The backbone on a GPU: float64 parity with the authors' outputs through the CUDA ContMix kernels, and mixed-
precision training steps of OverLoCK-T that must stay finite. Skipped with a reason where no GPU or no CUDA build of
``mmoverlock._ext`` is present."""
import pytest
import torch
from test_overlock_parity import TOLERANCE, build_reference_model, load_case_file, rel_err

from mmoverlock.models import OverLoCK
from mmoverlock.ops import available_backends
from mmoverlock.ops.contmix import BACKEND_ENV

requires_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and 'cuda' in available_backends()),
    reason='needs a CUDA GPU and mmoverlock._ext built with CUDA (FORCE_CUDA=1)')


@requires_cuda
@pytest.mark.parametrize('name,overview_fusion', [('detection', True), ('segmentation', False)])
def test_cuda_float64_matches_authors(reference_dir, name, overview_fusion, monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, 'cuda')  # every ContMix core runs on the CUDA kernels
    ref = load_case_file(reference_dir, name)
    model = build_reference_model(ref, overview_fusion).cuda()
    errors = {}
    for idx, case in enumerate(ref['cases']):
        model.zero_grad()
        x = case['input'].cuda().requires_grad_(True)
        outputs = model(x)
        loss = sum((out * w.cuda()).sum() for out, w in zip(outputs, case['out_weights']))
        loss.backward()
        for level, (out, expected) in enumerate(zip(outputs, case['outputs'])):
            errors[f'case{idx}/level{level}'] = rel_err(out.detach().cpu(), expected)
        errors[f'case{idx}/input_grad'] = rel_err(x.grad.cpu(), case['input_grad'])
        if case.get('param_grads'):
            params = dict(model.named_parameters())
            nonzero = {k: g for k, g in case['param_grads'].items() if g.abs().max() > 0}
            errors[f'case{idx}/param_grads'] = max(rel_err(params[k].grad.cpu(), g) for k, g in nonzero.items())
    print(f'{name} [cuda]: ' + ', '.join(f'{k}={v:.2e}' for k, v in errors.items()))
    bad = {k: v for k, v in errors.items() if not v <= TOLERANCE}
    assert not bad, f'relative errors above {TOLERANCE}: {bad}'


@requires_cuda
@pytest.mark.parametrize('amp_dtype', [torch.bfloat16, torch.float16], ids=str)
def test_cuda_autocast_training_step_is_finite(amp_dtype):
    torch.manual_seed(0)
    model = OverLoCK(arch='t', overview_fusion=True).cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    # float16 needs loss scaling (as in mmengine's AmpOptimWrapper); the gradients are checked after unscaling.
    scaler = torch.amp.GradScaler('cuda', enabled=amp_dtype is torch.float16)
    inputs = torch.randn(2, 3, 512, 512, device='cuda')
    with torch.autocast('cuda', dtype=amp_dtype):
        outputs = model(inputs)
        loss = sum(out.float().square().mean() for out in outputs)
    assert [out.shape[-2:] for out in outputs] == [(128, 128), (64, 64), (32, 32), (16, 16)]
    assert torch.isfinite(loss), loss
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert len(grads) > 0.9 * sum(1 for _ in model.parameters())
    not_finite = [name for name, g in grads.items() if not torch.isfinite(g).all()]
    assert not not_finite, f'non-finite gradients under {amp_dtype} autocast: {not_finite[:10]}'
    assert any(g.abs().max() > 0 for g in grads.values())
    scaler.step(optimizer)
    scaler.update()
