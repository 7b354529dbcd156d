"""Recomputing cheap layers in the backward (``recompute_into_conv``) keeps fewer maps and changes no number: the
plain chain's outputs, gradients and running statistics in float64, in training and eval mode, in both layouts; the
same for the blocks that use it (FusingSequential's cheap runs, ContMixBlock, RepConvBlock)."""
import pytest
import torch
from torch import nn

from mmoverlock.models.blocks import ContMixBlock, RepConvBlock
from mmoverlock.models.layers import GRN, FusingSequential, LayerNorm2d, ResDWConv, SEModule
from mmoverlock.models.recompute import plain_autograd, recompute_into_conv
from mmoverlock.ops.depthwise import DepthwiseConv2d

# float64, the same kernels in the same order up to GRN's norm (vector_norm vs sqrt of a sum of squares in the
# no-grad forward): ~1e-16 relative; any missing term or a wrong recomputation shows at order 1.
TOLERANCE = 1e-12
FORMATS = {'nchw': torch.contiguous_format, 'channels_last': torch.channels_last}


def rel_err(actual, expected):
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-300)).item()


def randomise(module):
    """Non-trivial BN affine and running statistics, GRN and LayerScale parameters (zero/one at init)."""
    torch.manual_seed(3)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                for t in (m.weight, m.bias, m.running_mean):
                    t.normal_()
                m.running_var.uniform_(0.5, 2)
            elif isinstance(m, GRN):
                m.gamma.normal_()
                m.beta.normal_()
    return module


def saved_numel(fn, *args):
    """Run ``fn(*args)``; return its output and the elements of the distinct storages autograd keeps."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes() // t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    return out, sum(storages.values())


def run_both(module, inputs, training, backward=lambda out: out[0] if isinstance(out, tuple) else out):
    """The module's outputs, input and parameter gradients, buffers after the call and saved elements: with
    recomputation, then with the plain composition from the same state."""
    state = {k: v.clone() for k, v in module.state_dict().items()}
    results = []
    for plain in (False, True):
        module.load_state_dict(state)
        module.train(training).zero_grad()
        leaves = [x.clone().requires_grad_(True) for x in inputs]
        with plain_autograd() if plain else torch.enable_grad():
            out, saved = saved_numel(module, *leaves)
        outs = out if isinstance(out, tuple) else (out, )
        torch.manual_seed(5)
        loss = sum((o * torch.randn_like(o)).sum() for o in outs if o is not None)
        loss.backward()
        results.append(dict(outs=[o.detach() for o in outs if o is not None], grads=[x.grad for x in leaves],
                            params={k: p.grad for k, p in module.named_parameters()},
                            buffers={k: v.clone() for k, v in module.state_dict().items()}, saved=saved))
    return results


def check_equal(ours, plain, param_tolerance=TOLERANCE):
    for a, b in zip(ours['outs'] + ours['grads'], plain['outs'] + plain['grads']):
        assert (a is None) == (b is None)  # (the first ContMix block does not read ctx)
        assert b is None or (a.shape == b.shape and rel_err(a, b) <= TOLERANCE)
    for key, grad in plain['params'].items():
        if grad is None:
            assert ours['params'][key] is None, key
        elif grad.abs().max() < 1e-10:  # zero but for rounding (a conv bias before a training-mode BN)
            assert ours['params'][key].abs().max() < 1e-10, key
        else:
            assert rel_err(ours['params'][key], grad) <= param_tolerance, key
    for key, buffer in plain['buffers'].items():  # running statistics moved once, as the plain call moves them
        if buffer.is_floating_point():  # (a BN after a folded GRN sees its input rounded otherwise)
            assert rel_err(ours['buffers'][key], buffer) <= TOLERANCE, key
        else:
            assert torch.equal(ours['buffers'][key], buffer), key


@pytest.mark.parametrize('training', [True, False], ids=['train', 'eval'])
@pytest.mark.parametrize('layout', list(FORMATS))
def test_recompute_into_conv_matches_the_plain_chain(training, layout):
    torch.manual_seed(0)
    cheap = [nn.BatchNorm2d(6), SEModule(6), nn.GELU(), GRN(6), LayerNorm2d(6)]
    for conv in (nn.Conv2d(6, 5, 3, stride=2, padding=1), DepthwiseConv2d(6, 5, dilation=2)):

        class Chain(nn.Module):

            def __init__(self):
                super().__init__()
                self.cheap, self.conv = nn.Sequential(*cheap), conv

            def forward(self, x):
                return recompute_into_conv(self.cheap, (x, ), [self.cheap], self.conv)

        chain = randomise(Chain().double())
        x = torch.randn(2, 6, 11, 9, dtype=torch.float64).contiguous(memory_format=FORMATS[layout])
        ours, plain = run_both(chain, [x], training)
        check_equal(ours, plain)
        assert ours['outs'][0].is_contiguous(memory_format=FORMATS[layout])
        # the input (and the conv's weight) alone, where the plain chain keeps every layer's input
        assert ours['saved'] == x.numel() + conv.weight.numel()
        assert plain['saved'] >= 5 * x.numel()


@pytest.mark.parametrize('training', [True, False], ids=['train', 'eval'])
def test_fusing_sequential_recomputes_cheap_runs_before_convs(training):
    """RepConvBlock's layer pattern: BN + SE before a conv, GELU + ResDWConv, GRN before a conv, and a conv followed
    by a BN that eval mode folds into it."""
    torch.manual_seed(0)
    seq = randomise(FusingSequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), SEModule(4), nn.Conv2d(4, 8, 1),
                                     nn.GELU(), ResDWConv(8), GRN(8), nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4)).double())
    x = torch.randn(2, 4, 10, 12, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    ours, plain = run_both(seq, [x], training)
    check_equal(ours, plain)
    # Not kept: the SE's output (the BN's too in training, where it is not folded), ResDWConv's and GRN's outputs
    # (twice as wide).
    assert ours['saved'] <= plain['saved'] - (6 if training else 5) * x.numel()


@pytest.mark.parametrize('training', [True, False], ids=['train', 'eval'])
@pytest.mark.parametrize('is_first', [True, False], ids=['first', 'later'])
def test_contmix_block_matches_the_plain_composition(training, is_first):
    torch.manual_seed(0)
    block = randomise(ContMixBlock(16, 8, kernel_size=7, smk_size=3, num_heads=2, ls_init_value=1.,
                                   is_first=is_first).double())
    x, h, ctx = (torch.randn(2, c, 9, 10, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
                 for c in (16, 8, 8))
    ours, plain = run_both(block, [x, h, ctx], training)
    check_equal(ours, plain)
    assert ours['saved'] < plain['saved'] - 6 * x.numel()


@pytest.mark.parametrize('training', [True, False], ids=['train', 'eval'])
def test_rep_conv_block_matches_the_plain_composition(training):
    torch.manual_seed(0)
    block = randomise(RepConvBlock(8, kernel_size=7, ls_init_value=1.).double())
    x = torch.randn(2, 8, 12, 11, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    ours, plain = run_both(block, [x], training)
    # In training the MLP's GRN is folded into its 1 x 1 conv (other rounding). The first LayerNorm's weight
    # gradient is a sum that cancels: 6e-5 from terms whose magnitudes add to 56, so float64 rounding of the terms
    # may reach 1e-16 * 56 / 6e-5 ~ 1e-10 of it (3e-11 seen); a wrong term would be of order 1.
    check_equal(ours, plain, param_tolerance=1e-9 if training else TOLERANCE)
    # Not kept: ResDWConv's and GRN's outputs (4 maps wide each), the SE's output (and the BN's in training, where
    # it is not folded).
    assert ours['saved'] <= plain['saved'] - (10 if training else 9) * x.numel()


def test_a_batch_norm_subclass_takes_the_plain_path():
    """SyncBatchNorm (or any subclass) may communicate or do more than the recomputation would repeat."""
    seq = FusingSequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1)).double().train()
    seq[1].__class__ = type('OtherBatchNorm', (nn.BatchNorm2d, ), {})
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    _, saved = saved_numel(seq, x)
    with plain_autograd():
        _, plain = saved_numel(seq, x)
    assert saved == plain
