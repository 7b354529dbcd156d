"""Stochastic depth sits on every residual branch: with ``drop_path=1`` in training mode each branch vanishes.

The spec's residual structure then leaves only the identity paths, which this test computes by hand from the
block's own submodules (no BatchNorm lies on them, so training-mode statistics do not matter). A branch that lost
its DropPath (or got one on the wrong side of the sum) changes the output.
"""
import pytest
import torch
from torch import nn

from mmoverlock.models.blocks import ContMixBlock, RepConvBlock


def _randomise(module: nn.Module, seed: int) -> None:
    """Random parameters everywhere, so LayerScales and biases on the identity paths are not identities."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)


@pytest.mark.parametrize('res_scale', [True, False])
def test_rep_conv_block_branch_vanishes(res_scale):
    block = RepConvBlock(8, kernel_size=7, mlp_ratio=2, ls_init_value=1.0, res_scale=res_scale, drop_path=1.0)
    _randomise(block, seed=0)
    block.train()
    x = torch.randn(2, 8, 11, 13, dtype=torch.float32)
    with torch.no_grad():
        out = block(x)
        y = block.dwconv(x)
        expected = block.ls(y) if res_scale else y
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    block.eval()  # DropPath is the identity in eval mode: the branch is back
    with torch.no_grad():
        assert (block(x) - expected).abs().max() > 1e-3


@pytest.mark.parametrize('is_last', [False, True])
@pytest.mark.parametrize('res_scale', [True, False])
def test_contmix_block_branches_vanish(res_scale, is_last):
    dim, ctx_dim = 8, 4
    block = ContMixBlock(dim, ctx_dim, kernel_size=7, smk_size=3, num_heads=2, mlp_ratio=2, ls_init_value=1.0,
                         res_scale=res_scale, drop_path=1.0, is_first=False, is_last=is_last)
    _randomise(block, seed=1)
    block.train()
    gen = torch.Generator().manual_seed(2)
    x, h, ctx = (torch.randn(2, c, 9, 10, generator=gen) for c in (dim, ctx_dim, ctx_dim))
    with torch.no_grad():
        out = block(x, h, ctx)
        f = block.dwconv1(torch.cat([x, block.x_scale(h) + block.h_scale(ctx)], dim=1))
        y = block.dwconv2(block.ls1(f) if res_scale else f)
        y = block.ls2(y) if res_scale else y
    expected = (y, None) if is_last else (y[:, :dim], y[:, dim:])
    torch.testing.assert_close(out[0], expected[0], rtol=1e-6, atol=1e-6)
    if is_last:
        assert out[1] is None
    else:
        torch.testing.assert_close(out[1], expected[1], rtol=1e-6, atol=1e-6)
    block.eval()
    with torch.no_grad():
        assert (block(x, h, ctx)[0] - expected[0]).abs().max() > 1e-3
