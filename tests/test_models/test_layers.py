"""The fast paths of the building blocks equal the plain formulation exactly (float64): the depthwise conv with its
custom CPU backward, and the DilatedReparamBlock in training mode (branch by branch) and in eval mode (folded)."""
import pytest
import torch
import torch.nn.functional as F

from mmoverlock.models import layers as layers_module
from mmoverlock.ops.depthwise import depthwise_conv2d, fused_depthwise_conv2d
from mmoverlock.models.layers import GRN, DilatedReparamBlock, FusingSequential, GlobalAvgPool2d, LayerNorm2d, ResDWConv

# float64 sums of a few hundred products differ by summation order only: ~1e-15 relative, 1e-12 leaves a margin
# of 1000 while any wrong tap or missing term shows up at order 1.
TOLERANCE = 1e-12
FORMATS = {'nchw': torch.contiguous_format, 'channels_last': torch.channels_last}


def rel_err(actual, expected):
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize('layout', list(FORMATS))
@pytest.mark.parametrize('kernel_size,dilation,bias', [(3, 1, True), (7, 1, False), (3, 7, False), (9, 2, True),
                                                       (17, 1, True)])
def test_depthwise_conv_matches_conv2d(kernel_size, dilation, bias, layout):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 21, 19, dtype=torch.float64).contiguous(memory_format=FORMATS[layout])
    weight = torch.randn(3, 1, kernel_size, kernel_size, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64) if bias else None
    padding = dilation * (kernel_size - 1) // 2
    grad_out = torch.randn(2, 3, 21, 19, dtype=torch.float64)
    results = []
    for conv in (depthwise_conv2d, lambda *a: F.conv2d(*a[:3], 1, a[3], a[4], 3)):
        leaves = [t.clone().requires_grad_(True) for t in (x, weight) + ((b, ) if bias else ())]
        out = conv(leaves[0], leaves[1], leaves[2] if bias else None, padding, dilation)
        out.backward(grad_out)
        results.append([out.detach()] + [t.grad for t in leaves])
    assert results[0][0].is_contiguous(memory_format=FORMATS[layout])
    for ours, expected in zip(*results):
        assert rel_err(ours, expected) <= TOLERANCE


def branch_sum(block, x, conv2d=F.conv2d):
    """The training form written out with plain convs: origin_bn(lk(x)) + sum of bn_i(dilated conv_i(x)).

    ``conv2d(x, weight, bias, stride, padding, dilation, groups)`` computes each depthwise conv."""
    out = block.origin_bn(conv2d(x, block.lk_origin.weight, None, 1, block.kernel_size // 2, 1, x.shape[1]))
    for k, r in block.branches:
        conv, bn = getattr(block, f'dil_conv_k{k}_{r}'), getattr(block, f'dil_bn_k{k}_{r}')
        out = out + bn(conv2d(x, conv.weight, None, 1, r * (k - 1) // 2, r, x.shape[1]))
    return out


def depthwise_as_conv2d(x, weight, bias, stride, padding, dilation, groups):
    """``depthwise_conv2d`` with ``F.conv2d``'s signature: the plain sum with the block's own conv (same rounding)."""
    return depthwise_conv2d(x, weight, bias, padding, dilation)


def random_block(kernel_size, channels):
    torch.manual_seed(1)
    block = DilatedReparamBlock(channels, kernel_size).double()
    with torch.no_grad():
        for name, tensor in list(block.named_parameters()) + list(block.named_buffers()):
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5 if 'var' in name else torch.randn_like(tensor))
    return block


@pytest.mark.parametrize('layout', list(FORMATS))
@pytest.mark.parametrize('training', [True, False], ids=['train', 'eval'])
@pytest.mark.parametrize('kernel_size', [17, 13, 7])
def test_dilated_reparam_block_matches_branch_sum(kernel_size, training, layout):
    """Training mode (batch statistics, running stats updated) and eval mode (folded on the fly) against the sum."""
    x = torch.randn(2, 4, 23, 20, dtype=torch.float64).contiguous(memory_format=FORMATS[layout])
    grad_out = torch.randn(2, 4, 23, 20, dtype=torch.float64)
    results = []
    for forward in (lambda blk, t: blk(t), branch_sum):
        block = random_block(kernel_size, 4).train(training)
        inp = x.clone().requires_grad_(True)
        out = forward(block, inp)
        out.backward(grad_out)
        grads = {k: p.grad for k, p in block.named_parameters()}
        results.append((out.detach(), inp.grad, grads, {k: b.clone() for k, b in block.named_buffers()}))
    (out, x_grad, grads, buffers), (ref_out, ref_x_grad, ref_grads, ref_buffers) = results
    assert rel_err(out, ref_out) <= TOLERANCE
    assert rel_err(x_grad, ref_x_grad) <= TOLERANCE
    assert set(grads) == set(ref_grads)
    for key in grads:
        assert rel_err(grads[key], ref_grads[key]) <= TOLERANCE, key
    for key in buffers:  # running statistics: updated once per training call, untouched in eval
        assert torch.equal(buffers[key], ref_buffers[key]) or rel_err(buffers[key], ref_buffers[key]) <= TOLERANCE, key


def test_folded_block_follows_parameter_changes():
    """The eval-mode fold is recomputed per call: changing a branch weight (or one BN's eps) changes the output as
    the sum does."""
    block = random_block(13, 4).eval()
    x = torch.randn(1, 4, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        block.dil_conv_k3_3.weight.mul_(3)
        assert rel_err(block(x), branch_sum(block, x)) <= TOLERANCE
        block.dil_bn_k3_4.eps = 0.5  # branches with different eps
        assert rel_err(block(x), branch_sum(block, x)) <= TOLERANCE
    assert set(block.state_dict()) == set(random_block(13, 4).state_dict())


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize('layout', list(FORMATS))
def test_res_dwconv_equals_input_plus_conv(layout, dtype):
    """``ResDWConv`` runs ``x + dwconv(x)`` as one conv with the identity in its centre tap (float32/64): the
    written-out sum's output and gradients, to the rounding of ``w + 1``; in bfloat16 the two terms stay apart."""
    torch.manual_seed(0)
    conv = ResDWConv(5).to(dtype)
    x = torch.randn(2, 5, 9, 11, dtype=dtype).contiguous(memory_format=FORMATS[layout])
    grad_out = torch.randn(2, 5, 9, 11, dtype=dtype)
    results = []
    for forward in (conv, lambda t: t + F.conv2d(t, conv.weight, conv.bias, 1, 1, 1, 5)):
        conv.zero_grad()
        inp = x.clone().requires_grad_(True)
        out = forward(inp)
        out.backward(grad_out)
        results.append((out.detach(), inp.grad, conv.weight.grad, conv.bias.grad))
    tolerance = {torch.float64: TOLERANCE, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    assert results[0][0].is_contiguous(memory_format=FORMATS[layout])
    for ours, expected in zip(*results):
        assert rel_err(ours.double(), expected.double()) <= tolerance


@pytest.fixture
def fused_calls(monkeypatch):
    """The (gelu, square_sums) of each ``fused_depthwise_conv2d`` call the model layers make."""
    calls = []

    def fused(*args, **kwargs):
        calls.append((kwargs['gelu'], kwargs['square_sums']))
        return fused_depthwise_conv2d(*args, **kwargs)

    monkeypatch.setattr(layers_module, 'fused_depthwise_conv2d', fused)
    return calls


@pytest.mark.parametrize('batch', [1, 3])
@pytest.mark.parametrize('layout', list(FORMATS))
def test_grn_folds_into_the_following_pointwise_conv_without_grad(layout, batch, fused_calls):
    """Without a gradient, FusingSequential's ``GELU -> ResDWConv -> GRN -> 1 x 1 conv`` runs the GELU, the conv and
    GRN's sums of squares as one fused step, and the GRN as per-sample scales of the conv's weight (GRN's own
    forward never runs) where the map has at least as many pixels as the conv has output channels, else on the map
    from the fused sums: the written-out chain's output, in its layout."""
    torch.manual_seed(0)
    layers = [torch.nn.GELU(), ResDWConv(6), GRN(6), torch.nn.Conv2d(6, 4, 1)]
    seq = FusingSequential(*layers).double()
    grn, pw = layers[2], layers[3]
    with torch.no_grad():
        grn.gamma.normal_()
        grn.beta.normal_()
    z = torch.randn(batch, 6, 9, 11, dtype=torch.float64).contiguous(memory_format=FORMATS[layout])
    grn_calls = []
    grn.register_forward_hook(lambda *args: grn_calls.append(1))
    with torch.no_grad():
        out = seq(z)
    assert not grn_calls and fused_calls == [('none', True)]

    def chain(z):
        u = F.gelu(z)
        y = u + F.conv2d(u, layers[1].weight, layers[1].bias, 1, 1, 1, 6)
        norm = y.pow(2).sum((2, 3), keepdim=True).sqrt()
        return F.conv2d(grn.gamma * y * (norm / (norm.mean(1, keepdim=True) + 1e-6)) + grn.beta + y,
                        pw.weight, pw.bias).detach()

    expected = chain(z)
    assert out.is_contiguous(memory_format=FORMATS[layout])
    assert rel_err(out, expected) <= TOLERANCE
    # with a gradient the GRN is folded into the conv as well (_GRNIntoPointwise), with the same output
    trained = seq(z.clone().requires_grad_(True))
    trained.sum().backward()
    assert not grn_calls and type(trained.grad_fn).__name__ == '_GRNIntoPointwiseBackward'
    assert rel_err(trained.detach(), expected) <= TOLERANCE
    # a map of fewer pixels than the conv has output channels: the GRN runs on the map, from the fused sums
    fused_calls.clear()
    with torch.no_grad():
        small = seq(z[:, :, :1, :3])
    assert grn_calls == [1] and fused_calls == [('none', True)]
    assert small.is_contiguous(memory_format=FORMATS[layout])
    assert rel_err(small, chain(z[:, :, :1, :3])) <= TOLERANCE


def _written_out_mlp_tail(z, dwconv, grn, pw):
    """``pw(GRN(u + dwconv(u)))`` with ``u = gelu(z)`` in plain differentiable operators (``vector_norm``)."""
    u = F.gelu(z)
    y = u + F.conv2d(u, dwconv.weight, dwconv.bias, 1, 1, 1, u.shape[1])
    norm = torch.linalg.vector_norm(y, 2, dim=(-2, -1), keepdim=True)
    return F.conv2d(grn.gamma * y * (norm / (norm.mean(1, keepdim=True) + 1e-6)) + grn.beta + y, pw.weight, pw.bias)


@pytest.mark.parametrize('batch', [1, 3])
@pytest.mark.parametrize('layout', list(FORMATS))
def test_grn_folds_into_the_following_pointwise_conv_with_a_gradient(layout, batch):
    """With a gradient, ``GELU -> ResDWConv -> GRN -> 1 x 1 conv`` runs as ``_GRNIntoPointwise`` (no GRN map,
    the scale's gradient from the conv's weight gradient): the written-out chain's output and gradients for the
    input and every parameter (float64), finite and zero where a channel of the GRN's input is all zero; gradcheck.
    Where the conv has more output channels than the map has pixels, the recomputed chain runs instead."""
    torch.manual_seed(0)
    layers = [torch.nn.GELU(), ResDWConv(6), GRN(6), torch.nn.Conv2d(6, 4, 1)]
    seq = FusingSequential(*layers).double()
    with torch.no_grad():
        for p in seq.parameters():
            p.normal_()
        layers[1].bias[2] = 0
    z = torch.randn(batch, 6, 9, 11, dtype=torch.float64).contiguous(memory_format=FORMATS[layout])
    z[:, 2] = 0  # GELU(0) = 0 and no bias: channel 2 of the GRN's input is all zero
    params = list(seq.parameters())
    z.requires_grad_()
    out = seq(z)
    assert type(out.grad_fn).__name__ == '_GRNIntoPointwiseBackward'
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, [z] + params, grad_out)
    expected = _written_out_mlp_tail(z, *layers[1:])
    expected_grads = torch.autograd.grad(expected, [z] + params, grad_out)
    assert out.is_contiguous(memory_format=FORMATS[layout])
    assert rel_err(out.detach(), expected.detach()) <= TOLERANCE
    for ours, theirs in zip(grads, expected_grads):
        assert torch.isfinite(ours).all() and rel_err(ours, theirs) <= TOLERANCE
    small = z.detach()[:, :, :2, :1].clone().requires_grad_()  # 2 pixels < 4 output channels: recomputed
    assert type(seq(small).grad_fn).__name__ == '_RecomputedIntoConvBackward'
    dwconv, grn, pw = layers[1:]
    assert torch.autograd.gradcheck(
        lambda *t: layers_module._GRNIntoPointwise.apply(*t, 1, 'none'),
        (z[:1, :, :4, :5].detach().clone().requires_grad_(), dwconv.weight, dwconv.bias, grn.gamma, grn.beta,
         pw.weight, pw.bias))


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('layout', list(FORMATS))
def test_grn_after_gelu_and_res_dwconv_without_a_conv_takes_the_fused_sums(layout, dtype, fused_calls):
    """``GELU -> ResDWConv -> GRN`` alone (the segment a training step's recomputation runs without a gradient in
    its forward): the GRN takes the fused step's sums of squares; the plain layers' output, zero channels finite."""
    torch.manual_seed(0)
    layers = [torch.nn.GELU(), ResDWConv(16), GRN(16)]
    seq = FusingSequential(*layers).to(dtype)
    with torch.no_grad():
        layers[2].gamma.normal_()
        layers[2].beta.normal_()
    z = torch.randn(2, 16, 9, 11, dtype=dtype).contiguous(memory_format=FORMATS[layout])
    z[:, 3] = -30.0  # gelu(-30) = 0: an all-zero channel after the (zero-initialised) conv
    with torch.no_grad():
        layers[1].weight[3] = 0
        layers[1].bias[3] = 0
        out = seq(z)
        expected = torch.nn.Sequential(*layers)(z)
    assert fused_calls == [('none', True)]
    assert out.is_contiguous(memory_format=FORMATS[layout]) and torch.isfinite(out).all()
    assert rel_err(out.double(), expected.double()) <= (TOLERANCE if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize('layout', list(FORMATS))
def test_layer_norm_keeps_memory_format(layout):
    norm = LayerNorm2d(5)
    x = torch.randn(2, 5, 6, 7).contiguous(memory_format=FORMATS[layout])
    out = norm(x)
    assert out.is_contiguous(memory_format=FORMATS[layout])
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (5, ), norm.weight, norm.bias, norm.eps).permute(0, 3, 1, 2)
    assert torch.equal(out, expected)


@pytest.mark.parametrize('layout', list(FORMATS))
def test_global_avg_pool_is_the_mean_with_a_broadcast_gradient(layout):
    pool = GlobalAvgPool2d()
    x = torch.randn(2, 5, 6, 7, dtype=torch.float64).contiguous(memory_format=FORMATS[layout]).requires_grad_()
    out = pool(x)
    assert rel_err(out, F.adaptive_avg_pool2d(x, 1)) < TOLERANCE
    grad_out = torch.randn_like(out)
    (grad, ) = torch.autograd.grad(out, x, grad_out)
    # The gradient is a view of [N, C, 1, 1] (no full map written), with the mean's values.
    assert grad.stride()[2:] == (0, 0)
    assert rel_err(grad, (grad_out / 42).expand_as(x)) < TOLERANCE
    # A traced graph keeps the size-generic pooling op.
    traced = torch.jit.trace(pool, x.detach())
    assert 'adaptive_avg_pool2d' in str(traced.graph)
    other = torch.randn(1, 5, 3, 4, dtype=torch.float64)
    assert rel_err(traced(other), other.mean((2, 3), keepdim=True)) < TOLERANCE


def _grn_and_map_with_a_zero_channel(layout):
    """A float64 GRN(6) with random gamma and beta, and a [2, 6, 9, 11] map in ``layout`` whose channel 2 is zero."""
    torch.manual_seed(0)
    grn = GRN(6).double()
    with torch.no_grad():
        grn.gamma.normal_()
        grn.beta.normal_()
    x = torch.randn(2, 6, 9, 11, dtype=torch.float64).contiguous(memory_format=FORMATS[layout])
    x[:, 2] = 0
    return grn, x


@pytest.mark.parametrize('layout', list(FORMATS))
def test_grn_inference_path_matches_training_path(layout):
    """GRN's no-grad norm (sum of squares) equals the differentiable one (vector_norm); zero channels stay finite."""
    grn, x = _grn_and_map_with_a_zero_channel(layout)
    with torch.no_grad():
        fast = grn(x)
    inp = x.clone().requires_grad_(True)
    out = grn(inp)
    out.sum().backward()
    assert rel_err(fast, out.detach()) <= TOLERANCE
    assert torch.isfinite(inp.grad).all()


def saved_maps(fn, x, min_numel):
    """Run ``fn(x)`` and return the distinct tensors of at least ``min_numel`` elements autograd keeps for backward."""
    kept = {}

    def pack(t):
        if t.numel() >= min_numel:
            kept[t.untyped_storage().data_ptr()] = t
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(x)
    return out, list(kept.values())


@pytest.mark.parametrize('momentum', [0.1, None], ids=['momentum', 'cumulative'])
def test_training_block_keeps_only_its_input_and_updates_statistics_once(momentum):
    """The training form saves no branch output (the branches are recomputed in the backward), and its running
    statistics move as one call of the plain branch sum moves them, twice in a row (to float64 rounding: with the
    compiled op the block computes the batch statistics itself, not BatchNorm's kernel)."""
    x = torch.randn(2, 4, 23, 20, dtype=torch.float64)
    blocks = [random_block(17, 4).train() for _ in range(2)]
    for block in blocks:
        for bn in block._batch_norms():
            bn.momentum = momentum
    for step in range(2):
        inp = x.clone().requires_grad_(True)
        out, kept = saved_maps(blocks[0], inp, min_numel=x.numel())
        assert [t.data_ptr() for t in kept] == [inp.data_ptr()]
        out.sum().backward()
        branch_sum(blocks[1], x.clone(), depthwise_as_conv2d).sum().backward()
        for bn, ref in zip(blocks[0]._batch_norms(), blocks[1]._batch_norms()):
            assert bn.num_batches_tracked.item() == ref.num_batches_tracked.item() == step + 1
            torch.testing.assert_close(bn.running_mean, ref.running_mean, rtol=1e-13, atol=1e-15)
            torch.testing.assert_close(bn.running_var, ref.running_var, rtol=1e-13, atol=1e-15)
    # A BN subclass (e.g. SyncBatchNorm, which reduces over processes) takes the plain path.
    block = random_block(7, 4).train()
    block.origin_bn.__class__ = type('OtherBatchNorm', (torch.nn.BatchNorm2d, ), {})
    _, kept = saved_maps(block, x.clone().requires_grad_(True), min_numel=x.numel())
    assert len(kept) > 1


@pytest.mark.parametrize('layout', list(FORMATS))
def test_fused_gelu_res_dwconv_matches_plain_sequential(layout):
    """FusingSequential's GELU + ResDWConv step: the plain chain's outputs and gradients, without keeping GELU's
    output for the backward."""
    torch.manual_seed(0)
    layers = [torch.nn.Conv2d(3, 6, 1), torch.nn.GELU(), ResDWConv(6), GRN(6)]
    fused, plain = FusingSequential(*layers).double(), torch.nn.Sequential(*layers).double()
    with torch.no_grad():
        layers[3].gamma.normal_()
        layers[3].beta.normal_()
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64).contiguous(memory_format=FORMATS[layout])
    grad_out = torch.randn(2, 6, 9, 11, dtype=torch.float64)
    results = []
    for seq in (fused, plain):
        seq.zero_grad()
        inp = x.clone().requires_grad_(True)
        out, kept = saved_maps(seq, inp, min_numel=grad_out.numel())
        out.backward(grad_out)
        results.append((out.detach(), inp.grad, [p.grad.clone() for p in seq.parameters()], len(kept)))
    (out, x_grad, grads, n_kept), (ref_out, ref_x_grad, ref_grads, ref_kept) = results
    assert out.is_contiguous(memory_format=FORMATS[layout])
    assert rel_err(out, ref_out) <= TOLERANCE
    assert rel_err(x_grad, ref_x_grad) <= TOLERANCE
    for g, ref in zip(grads, ref_grads):
        assert rel_err(g, ref) <= TOLERANCE
    assert n_kept == ref_kept - 1  # GELU's output is recomputed, not kept


@pytest.mark.parametrize('deploy', [False, True], ids=['train_form', 'deploy_form'])
def test_eval_mode_folds_batch_norms_into_preceding_convs(deploy):
    """In eval mode a conv (or a DilatedReparamBlock) followed by a BN runs as one conv: the plain chain's outputs and
    gradients; in training mode nothing is folded (the BN keeps using batch statistics)."""
    torch.manual_seed(0)
    block = random_block(13, 4)
    if deploy:
        block.eval().switch_to_deploy()
    layers = [torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.BatchNorm2d(4), block, torch.nn.BatchNorm2d(4),
              torch.nn.GELU()]
    with torch.no_grad():
        for bn in (layers[1], layers[3]):
            for tensor in (bn.weight, bn.bias, bn.running_mean):
                tensor.normal_()
            bn.running_var.uniform_(0.5, 2)
    fused, plain = FusingSequential(*layers).double(), torch.nn.Sequential(*layers).double()
    x = torch.randn(2, 4, 17, 15, dtype=torch.float64)
    grad_out = torch.randn(2, 4, 17, 15, dtype=torch.float64)
    bn_calls = []
    for bn in (layers[1], layers[3]):
        bn.register_forward_hook(lambda *args: bn_calls.append(1))
    for training in (False, True):
        results = []
        for seq in (fused, plain):
            seq.train(training).zero_grad()
            if deploy:
                block.eval()
            with torch.no_grad():  # the same running statistics for both calls in training mode
                stats = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in (layers[1], layers[3])]
            inp = x.clone().requires_grad_(True)
            bn_calls.clear()
            out = seq(inp)
            assert len(bn_calls) == (0 if seq is fused and not training else 2)  # folded: the BNs never run
            out.backward(grad_out)
            with torch.no_grad():
                for bn, (mean, var) in zip((layers[1], layers[3]), stats):
                    bn.running_mean.copy_(mean)
                    bn.running_var.copy_(var)
            results.append((out.detach(), inp.grad, [p.grad.clone() for p in seq.parameters()]))
        (out, x_grad, grads), (ref_out, ref_x_grad, ref_grads) = results
        assert rel_err(out, ref_out) <= TOLERANCE
        assert rel_err(x_grad, ref_x_grad) <= TOLERANCE
        for g, ref in zip(grads, ref_grads):
            assert rel_err(g, ref) <= TOLERANCE


def test_training_forms_under_cpu_autocast_match_the_plain_chain():
    """Under bfloat16 autocast the recomputed branches (autocast restored in the backward) and the fused GELU step
    give the plain formulation's numbers exactly (each depthwise conv computed by ``depthwise_conv2d``, which runs
    the large kernels in float32 there)."""
    torch.manual_seed(0)
    blocks = [random_block(13, 8).float().train() for _ in range(2)]
    mlps = [torch.nn.Sequential(torch.nn.Conv2d(8, 8, 1), torch.nn.GELU(), ResDWConv(8)) for _ in range(2)]
    mlps[1].load_state_dict(mlps[0].state_dict())
    x = torch.randn(2, 8, 20, 20)
    results = []
    for block, mlp, fused in ((blocks[0], mlps[0], True), (blocks[1], mlps[1], False)):
        inp = x.clone().requires_grad_(True)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = FusingSequential(*mlp)(block(inp)) if fused else mlp(branch_sum(block, inp, depthwise_as_conv2d))
        out.float().square().sum().backward()
        results.append([out.detach(), inp.grad] + [p.grad for p in (*block.parameters(), *mlp.parameters())])
    assert results[0][0].dtype == torch.bfloat16
    for ours, expected in zip(*results):
        assert torch.equal(ours, expected)


@pytest.mark.parametrize('layout', list(FORMATS))
def test_grn_with_a_gradient_is_the_written_out_formula(layout):
    """With a gradient (CPU, the compiled ``spatial_dot``) GRN runs as one autograd function from per-channel
    statistics: the written-out formula's output and gradients (``vector_norm``, float64), in the input's layout, an
    all-zero channel's gradient finite and zero-norm safe, and gradcheck."""
    grn, x = _grn_and_map_with_a_zero_channel(layout)
    x.requires_grad_()
    out = grn(x)
    if layers_module.runs_compiled(x):
        assert type(out.grad_fn).__name__ == '_GRNFunctionBackward'
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, grn.gamma, grn.beta), grad_out)
    ref_x = x.detach().clone().requires_grad_()
    norm = torch.linalg.vector_norm(ref_x, 2, dim=(-2, -1), keepdim=True)
    expected = grn.gamma * ref_x * (norm / (norm.mean(1, keepdim=True) + 1e-6)) + grn.beta + ref_x
    expected_grads = torch.autograd.grad(expected, (ref_x, grn.gamma, grn.beta), grad_out)
    assert out.is_contiguous(memory_format=FORMATS[layout])
    assert rel_err(out.detach(), expected.detach()) <= TOLERANCE
    for ours, theirs in zip(grads, expected_grads):
        assert torch.isfinite(ours).all() and rel_err(ours, theirs) <= TOLERANCE
    assert torch.autograd.gradcheck(lambda a, g, b: layers_module._GRNFunction.apply(a, g, b),
                                     (x, grn.gamma, grn.beta))
