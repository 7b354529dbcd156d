"""OverLoCK backbone: state-dict layout of every variant, checkpoint loading, arch validation and training options."""
import os.path as osp

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from _helpers import TINY_ARCH, assert_matches_manifest
from mmoverlock.models import ContMixBlock, OverLoCK, OverLoCKClassifier
from mmoverlock.models.checkpoint import LoadResult

VARIANTS = ('xt', 't', 's', 'b')


@pytest.mark.parametrize('deploy', [False, True], ids=['train', 'deploy'])
@pytest.mark.parametrize('task', ['detection', 'segmentation'])
@pytest.mark.parametrize('variant', VARIANTS)
def test_state_dict_matches_manifest(official_manifest, variant, task, deploy):
    entry = official_manifest[f'{task}/overlock_{variant}' + ('/deploy' if deploy else '')]
    with torch.device('meta'):
        model = OverLoCK(arch=variant, overview_fusion=(task == 'detection'), deploy=deploy)
    assert_matches_manifest(model, entry)


@pytest.mark.parametrize('variant,channels', [('xt', [56, 112, 340, 420]), ('t', [64, 128, 384, 640]),
                                              ('s', [64, 128, 448, 640]), ('b', [80, 160, 528, 720])])
def test_out_channels(variant, channels):
    with torch.device('meta'):
        assert OverLoCK(arch=variant).out_channels == channels
        assert OverLoCK(arch=variant, out_indices=(1, 3)).out_channels == [channels[1], channels[3]]


@pytest.mark.parametrize('size', [(32, 32), (64, 96), (112, 137), (97, 33)])
def test_any_input_size_and_batch(size):
    torch.manual_seed(0)
    model = OverLoCK(arch=TINY_ARCH, out_indices=(0, 2, 3), overview_fusion=True).eval()
    model.init_weights()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        outs = model(x)
    assert len(outs) == 3
    for out, stride, channels in zip(outs, (4, 16, 32), model.out_channels):
        assert out.shape == (2, channels, -(-size[0] // stride), -(-size[1] // stride))
        assert torch.isfinite(out).all()


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(KeyError, match="arch must be one of"):
        OverLoCK(arch='huge')
    with pytest.raises(KeyError, match='missing .*smk_size'):
        OverLoCK(arch={k: v for k, v in TINY_ARCH.items() if k != 'smk_size'})
    with pytest.raises(KeyError, match="unexpected .*'foo'"):
        OverLoCK(arch=dict(TINY_ARCH, foo=1))
    with pytest.raises(ValueError, match='out_indices'):
        OverLoCK(arch=TINY_ARCH, out_indices=(4,))
    model = OverLoCK(arch=TINY_ARCH)
    with pytest.raises(ValueError, match=r'\[B, 3, H, W\]'):
        model(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match='>= 1'):
        model(torch.zeros(1, 3, 0, 64))


def _random_state_dict(shapes):
    torch.manual_seed(0)
    return {k: (torch.randn(s) if s else torch.tensor(3)) for k, s in shapes.items()}


@pytest.mark.parametrize('wrapper', ['state_dict', 'model', 'bare'])
def test_imagenet_checkpoint_loads_with_expected_key_report(official_manifest, tmp_path, wrapper):
    shapes = official_manifest['classification/overlock_xt']['state_dict']
    state_dict = _random_state_dict(shapes)
    path = tmp_path / 'overlock_xt_in1k_224.pth'
    torch.save(state_dict if wrapper == 'bare' else {wrapper: state_dict}, path)
    model = OverLoCK(arch='xt', overview_fusion=True, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    report = model.pretrained_load_result
    assert isinstance(report, LoadResult)
    assert {k.split('.')[0] for k in report.unexpected_keys} == {'head', 'aux_head'}
    assert set(report.unexpected_keys) == {k for k in shapes if k.startswith(('head.', 'aux_head.'))}
    assert {k.split('.')[0] for k in report.missing_keys} == {'extra_norm', 'h_proj'}
    loaded = model.state_dict()
    for key in ('patch_embed1.0.weight', 'sub_blocks4.1.rpb2', 'blocks3.2.proj.1.dil_bn_k3_5.running_var'):
        assert torch.equal(loaded[key], state_dict[key])


def test_deploy_and_detector_checkpoints_load(official_manifest, tmp_path):
    deploy_sd = _random_state_dict(official_manifest['segmentation/overlock_xt/deploy']['state_dict'])
    torch.save(deploy_sd, tmp_path / 'deploy.pth')
    model = OverLoCK(arch='xt', deploy=True, init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'deploy.pth')))
    model.init_weights()
    assert torch.equal(model.state_dict()['blocks1.0.proj.1.lk_origin.bias'], deploy_sd['blocks1.0.proj.1.lk_origin.bias'])

    det_sd = _random_state_dict(official_manifest['detection/overlock_xt']['state_dict'])
    full = {f'backbone.{k}': v for k, v in det_sd.items()}
    full['neck.lateral_convs.0.conv.weight'] = torch.zeros(256, 56, 1, 1)
    torch.save({'meta': {}, 'state_dict': full}, tmp_path / 'detector.pth')
    model = OverLoCK(arch='xt', overview_fusion=True,
                     init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'detector.pth')))
    model.init_weights()
    assert all(torch.equal(v, det_sd[k]) for k, v in model.state_dict().items())


def test_wrong_variant_or_form_fails_clearly(official_manifest, tmp_path):
    torch.save(_random_state_dict(official_manifest['classification/overlock_t']['state_dict']), tmp_path / 't.pth')
    model = OverLoCK(arch='xt', init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 't.pth')))
    with pytest.raises(ValueError, match=r"looks like OverLoCK-T \(arch='t'\).*this model is OverLoCK-XT"):
        model.init_weights()
    deploy_sd = _random_state_dict(official_manifest['classification/overlock_xt/deploy']['state_dict'])
    torch.save(deploy_sd, tmp_path / 'd.pth')
    model = OverLoCK(arch='xt', init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'd.pth')))
    with pytest.raises(ValueError, match='deploy=True'):
        model.init_weights()


def test_default_init_follows_the_spec():
    torch.manual_seed(0)
    model = OverLoCK(arch=TINY_ARCH, overview_fusion=True)
    model.init_weights()
    sd = model.state_dict()
    assert sd['sub_blocks3.0.rpb2'].abs().max() == 0 and sd['blocks1.0.proj.7.gamma'].abs().max() == 0
    assert torch.all(sd['extra_norm.0.weight'] == 1) and torch.all(sd['patch_embed1.1.weight'] == 1)
    assert torch.all(sd['h_proj.1.weight'] == 1e-5) and torch.all(sd['sub_blocks3.1.x_scale.weight'] == 1)
    std = sd['sub_blocks4.0.mlp.0.weight'].std().item()
    assert 0.015 < std < 0.025 and sd['sub_blocks4.0.mlp.0.bias'].abs().max() == 0


def test_switch_to_deploy_is_exact_in_eval():
    torch.manual_seed(0)
    model = OverLoCK(arch=TINY_ARCH, overview_fusion=True).double()
    model.init_weights()
    for m in model.modules():  # non-trivial BN statistics so that the folding is really exercised
        if isinstance(m, _BatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
    model.eval()
    x = torch.randn(1, 3, 64, 80, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
        after = model.switch_to_deploy()(x)
    deployed = OverLoCK(arch=TINY_ARCH, overview_fusion=True, deploy=True)
    assert set(deployed.state_dict()) == set(model.state_dict())
    for a, b in zip(before, after):
        assert torch.allclose(a, b, rtol=0, atol=1e-10 * b.abs().max().item())


def test_frozen_stages_and_norm_eval():
    model = OverLoCK(arch=TINY_ARCH, frozen_stages=2, norm_eval=True)
    model.init_weights()
    model.train()
    frozen = [model.patch_embed1, model.blocks1, model.extra_norm[0], model.patch_embed2, model.blocks2,
              model.extra_norm[1]]
    for module in frozen:
        assert not module.training
        assert all(not p.requires_grad for p in module.parameters())
    assert all(p.requires_grad for p in model.blocks3.parameters())
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert bns and all(not m.training for m in bns)
    stats = {k: v.clone() for k, v in model.state_dict().items() if 'running' in k}
    outs = model(torch.randn(2, 3, 64, 64))
    sum(o.sum() for o in outs).backward()
    assert all(torch.equal(stats[k], v) for k, v in model.state_dict().items() if 'running' in k)
    assert all(p.grad is None for m in frozen for p in m.parameters())
    assert model.blocks3[0].dwconv.weight.grad is not None


def test_with_cp_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = OverLoCK(arch=TINY_ARCH, overview_fusion=True).double()
    plain.init_weights()
    ckpt = OverLoCK(arch=TINY_ARCH, overview_fusion=True, with_cp=True).double()
    ckpt.load_state_dict(plain.state_dict())
    plain.eval(), ckpt.eval()
    x = torch.randn(1, 3, 48, 40, dtype=torch.float64)
    grads = []
    for model in (plain, ckpt):
        xi = x.clone().requires_grad_(True)
        sum((o * o).sum() for o in model(xi)).backward()
        grads.append([xi.grad] + [p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


class _CallRecorder(torch.overrides.TorchFunctionMode):
    """Records the names of the torch functions and tensor methods called under it."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.add(getattr(func, '__name__', str(func)))
        return func(*args, **(kwargs or {}))


class _BackwardMapRecorder(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the sizes of the maps that the backward of a slice or a select makes (zero-filled, then written)."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.slice_backward, torch.ops.aten.select_backward):
            self.sizes.append(out.numel())
        return out


@pytest.mark.parametrize('is_first', [True, False], ids=['first', 'later'])
def test_contmix_block_backward_makes_no_zero_filled_maps(is_first):
    """The block's channel splits (its two outputs, the query and key inputs, the two halves of the value) take
    their gradients as one map each: no slice or select backward fills a zero map of a feature map's size, whose
    sum would also leave the channels-last layout and slow the 1 x 1 convs' backward."""
    torch.manual_seed(0)
    block = ContMixBlock(16, 8, kernel_size=7, smk_size=3, num_heads=2, is_first=is_first).train()
    x, h, ctx = (torch.randn(1, c, 9, 10).contiguous(memory_format=torch.channels_last).requires_grad_()
                 for c in (16, 8, 8))
    out_x, out_h = block(x, h, ctx)
    recorder = _BackwardMapRecorder()
    with recorder:
        (out_x.square().sum() + out_h.sum()).backward()
    assert max(recorder.sizes, default=0) < h.numel(), recorder.sizes
    assert x.grad.is_contiguous(memory_format=torch.channels_last)


class _NchwMapRecorder(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the ops that write a multi-channel map of ``size`` [.., C > 1, H, W] in the contiguous (NCHW) format."""

    def __init__(self, size):
        super().__init__()
        self.size = tuple(size)
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out, ):
            if (isinstance(t, torch.Tensor) and t.dim() == 4 and tuple(t.shape[-2:]) == self.size and t.shape[1] > 1
                    and t.is_contiguous() and not t.is_contiguous(memory_format=torch.channels_last)):
                self.ops.append(str(func))
        return out


@pytest.mark.parametrize('is_first', [True, False], ids=['first', 'later'])
def test_contmix_block_backward_keeps_channels_last(is_first):
    """With channels-last inputs, no gradient map of the block is written in the contiguous format: the query's and
    the values' heads (``channel_heads``) write their gradients in the map's own layout, so the BatchNorm, GRN and
    1 x 1 conv backwards after them and the sums with the other branches convert nothing."""
    torch.manual_seed(0)
    block = ContMixBlock(16, 8, kernel_size=7, smk_size=3, num_heads=2, is_first=is_first).train()
    x, h, ctx = (torch.randn(1, c, 9, 10).contiguous(memory_format=torch.channels_last).requires_grad_()
                 for c in (16, 8, 8))
    out_x, out_h = block(x, h, ctx)
    recorder = _NchwMapRecorder((9, 10))
    with recorder:
        (out_x.square().sum() + out_h.square().sum()).backward()  # dense gradients, as a network's
    assert recorder.ops == [], recorder.ops


@pytest.mark.parametrize('form', ['backbone', 'classifier'])
def test_unfused_contmix_backend_gives_the_same_outputs_and_gradients(form):
    """``contmix_backend='unfused'`` (the authors' formulation: bias and softmax in torch, then the aggregation alone)
    computes the default backend's numbers in float64, outputs and every gradient, in both model classes."""
    def build(**kwargs):
        if form == 'backbone':
            return OverLoCK(arch=TINY_ARCH, overview_fusion=True, **kwargs).double().eval()
        return OverLoCKClassifier(arch=TINY_ARCH, num_classes=7, aux_head=True, **kwargs).double().train()

    torch.manual_seed(0)
    default = build()
    default.init_weights()
    for module in default.modules():  # non-trivial biases: the unfused path must gather them as the fused op does
        if isinstance(module, ContMixBlock):
            torch.nn.init.normal_(module.rpb1, std=0.5)
            torch.nn.init.normal_(module.rpb2, std=0.5)
    unfused = build(contmix_backend='unfused')
    unfused.load_state_dict(default.state_dict())
    assert {b.contmix_backend for b in unfused.modules() if isinstance(b, ContMixBlock)} == {'unfused'}
    x = torch.randn(2, 3, 72, 56, dtype=torch.float64)
    results = []
    for model in (default, unfused):
        xi = x.clone().requires_grad_(True)
        with _CallRecorder() as calls:
            outs = model(xi)
        sum((o * o).sum() for o in outs).backward()
        results.append(([o.detach() for o in outs] + [xi.grad] + [p.grad for p in model.parameters()], calls.names))
    (expected, default_calls), (actual, unfused_calls) = results
    assert 'softmax' in unfused_calls and 'softmax' not in default_calls  # the unfused formulation really ran
    for a, b in zip(actual, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_drop_path_rates_are_linear():
    model = OverLoCK(arch=TINY_ARCH, drop_path_rate=0.3)
    rates = [b.proj[-1].drop_prob if hasattr(b.proj[-1], 'drop_prob') else 0.
             for name in ('blocks1', 'blocks2', 'blocks3', 'blocks4') for b in getattr(model, name)]
    rates += [getattr(b.drop_path, 'drop_prob', 0.) for name in ('sub_blocks3', 'sub_blocks4')
              for b in getattr(model, name)]
    assert rates == pytest.approx(torch.linspace(0, 0.3, 8).tolist())


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU (autocast to float16/bfloat16)')
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_autocast_on_gpu(dtype):
    torch.manual_seed(0)
    model = OverLoCK(arch=TINY_ARCH, overview_fusion=True).cuda()
    model.init_weights()
    x = torch.randn(2, 3, 96, 128, device='cuda', requires_grad=True)
    with torch.no_grad():
        reference = model(x)
    with torch.autocast('cuda', dtype=dtype):
        outs = model(x)
    sum(o.float().sum() for o in outs).backward()
    assert torch.isfinite(x.grad).all()
    for out, ref in zip(outs, reference):
        assert torch.isfinite(out).all()
        assert (out.float() - ref).abs().max() <= 0.05 * ref.abs().max()


def _dense_kernels(model):
    return {name: p for name, p in model.named_parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] > 1}


def test_a_seed_gives_the_same_weights_in_every_memory_format():
    """The init draws in index order, not in the storage order of the channels-last kernels."""
    states = []
    for memory_format in ('auto', 'contiguous'):
        torch.manual_seed(0)
        model = OverLoCK(arch=TINY_ARCH, memory_format=memory_format)
        model.init_weights()
        states.append(model.state_dict())
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


@pytest.mark.parametrize('memory_format', ['auto', 'channels_last', 'contiguous'])
def test_dense_kernels_are_stored_in_the_layout_the_maps_run_in(memory_format):
    """The stem's and the downsampling layers' 3 x 3 kernels are channels-last where the maps are (no per-call copy
    in oneDNN / cuDNN), and stay so through ``init_weights``, ``load_state_dict`` of NCHW tensors and ``.double()``;
    the outputs and gradients are those of NCHW kernels."""
    torch.manual_seed(0)
    model = OverLoCK(arch=TINY_ARCH, memory_format=memory_format)
    model.init_weights()
    layout = torch.contiguous_format if memory_format == 'contiguous' else torch.channels_last
    kernels = _dense_kernels(model)
    assert set(kernels) == {f'patch_embed1.{i}.weight' for i in (0, 3, 6, 9)} | {
        'patch_embed2.0.weight', 'patch_embed3.0.weight', 'patch_embed4.0.weight', 'patch_embedx.x_proj.0.weight',
        'patch_embedx.h_proj.0.weight'}
    assert all(p.is_contiguous(memory_format=layout) for p in kernels.values())

    reference = OverLoCK(arch=TINY_ARCH, memory_format=memory_format)
    reference.load_state_dict({k: v.contiguous() for k, v in model.state_dict().items()})
    assert all(p.is_contiguous(memory_format=layout) for p in _dense_kernels(reference).values())
    for p in _dense_kernels(reference).values():  # the plain layout, as before this change
        p.data = p.data.contiguous()
    model.double()
    reference.double()
    assert all(p.is_contiguous(memory_format=layout) for p in _dense_kernels(model).values())
    x = torch.randn(2, 3, 64, 72, dtype=torch.float64)
    outs = [m(x) for m in (model, reference)]
    for out, ref in zip(*outs):
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    sum(o.sum() for o in outs[0]).backward()
    sum(o.sum() for o in outs[1]).backward()
    for (name, p), q in zip(_dense_kernels(model).items(), _dense_kernels(reference).values()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=name)
        assert p.grad.is_contiguous(memory_format=layout), name
