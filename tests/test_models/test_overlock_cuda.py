"""The backbone on a GPU: float64 parity with the authors' outputs through the CUDA ContMix kernels, and mixed-
precision training steps of OverLoCK-T that must stay finite. Skipped with a reason where no GPU or no CUDA build of
``mmoverlock._ext`` is present."""
import pytest
import torch

from _helpers import TINY_ARCH
from _helpers.parity import TOLERANCE, build_reference_model, parity_errors
from _helpers.reference_data import load_reference
from mmoverlock.models import OverLoCK
from mmoverlock.ops import available_backends
from mmoverlock.ops.contmix import BACKEND_ENV

requires_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and 'cuda' in available_backends()),
    reason='needs a CUDA GPU and mmoverlock._ext built with CUDA (FORCE_CUDA=1)')


@requires_cuda
def test_cuda_float64_matches_authors(reference_dir, monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, 'cuda')  # every ContMix core runs on the CUDA kernels
    ref = load_reference(reference_dir, 'detection')
    ref = {'cases': [{k: ({n: g.cuda() for n, g in v.items()} if isinstance(v, dict) else
                          [t.cuda() for t in v] if isinstance(v, list) else v.cuda()) for k, v in case.items()}
                     for case in ref['cases']], 'state_dict': ref['state_dict'], 'arch': ref['arch']}
    model = build_reference_model(ref, True).cuda()
    errors = parity_errors(model, ref)
    print('detection [cuda]: ' + ', '.join(f'{k}={v:.2e}' for k, v in errors.items()))
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


@requires_cuda
def test_cuda_float16_grad_scaler_recovers():
    """float16 training with GradScaler over several steps: the position biases stay float32 (no float16 copy), their
    gradients arrive in float32, a scale too large for float16 is backed off by skipped steps, and the steps after
    that are applied with finite gradients."""
    torch.manual_seed(0)
    model = OverLoCK(arch=TINY_ARCH).cuda().train()
    for name, p in model.named_parameters():
        if name.endswith(('rpb1', 'rpb2')):
            torch.nn.init.normal_(p, std=0.02)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    # A loss scaled by 2^48 overflows float16 (65504) in the first backward passes for certain: those steps must be
    # skipped and the scale backed off (by 2^8 per skipped step here) until the steps go through.
    init_scale = 2.0**48
    scaler = torch.amp.GradScaler('cuda', init_scale=init_scale, backoff_factor=2.0**-8, growth_interval=1000)
    inputs = torch.randn(2, 3, 256, 256, device='cuda')
    scales, applied = [], []
    rpb = model.sub_blocks3[0].rpb1
    for _ in range(16):
        optimizer.zero_grad(set_to_none=True)
        before = rpb.detach().clone()
        with torch.autocast('cuda', dtype=torch.float16):
            loss = sum(out.float().square().mean() for out in model(inputs))
        assert torch.isfinite(loss), loss
        scaler.scale(loss).backward()
        assert rpb.grad.dtype == torch.float32
        scaler.step(optimizer)
        scaler.update()
        scales.append(scaler.get_scale())
        applied.append(not torch.equal(before, rpb.detach()))
    print('scales', scales, 'applied', applied)
    assert scales[-1] < init_scale, 'no step overflowed: the test no longer exercises the recovery'
    assert all(applied[-4:]), f'the scaler did not recover: steps applied {applied}, scales {scales}'
    assert scales[-4:] == [scales[-1]] * 4, f'the scale still backs off at the end: {scales}'
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in grads)
