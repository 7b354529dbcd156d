"""Tests of ``mmoverlock.ops.statistics.spatial_dot`` (the compiled ``mmoverlock::spatial_dot``) against the
float64 composition ``(a * b).sum((2, 3))``: every CPU instruction set this CPU runs, both memory formats (and mixed
ones), channel counts with vector tails; opcheck; the composition where the op does not apply; bad inputs."""
import pytest
import torch

from mmoverlock.ops import statistics
from mmoverlock.ops.statistics import spatial_dot


requires_op = pytest.mark.skipif(not statistics.HAS_SPATIAL_DOT,
                                 reason='mmoverlock._ext is not built (pip install -e .)')

FORMATS = {'nchw': torch.contiguous_format, 'nhwc': torch.channels_last}
SHAPES = [(2, 5, 9, 11), (1, 37, 13, 10), (3, 64, 7, 40), (1, 16, 1, 1), (2, 3, 4, 5)]


def _maps(shape, dtype, layouts, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=dtype).contiguous(memory_format=FORMATS[layout])
            for layout in layouts]


@requires_op
@pytest.mark.parametrize('layouts', [('nchw', 'nchw'), ('nhwc', 'nhwc'), ('nhwc', 'nchw'), ('nchw', 'nhwc')])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('shape', SHAPES, ids=str)
def test_matches_float64_composition_on_every_isa(shape, dtype, layouts, cpu_capability):
    a, b = _maps(shape, dtype, layouts)
    out = torch.ops.mmoverlock.spatial_dot(a, b)
    expected = (a.double() * b.double()).sum((2, 3))
    assert out.shape == shape[:2] and out.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=tol * expected.abs().max().clamp_min(1).item())
    # the sum of squares is the same op with a = b
    squares = torch.ops.mmoverlock.spatial_dot(a, a)
    torch.testing.assert_close(squares.double(), a.double().square().sum((2, 3)), rtol=tol, atol=0)


@requires_op
def test_does_not_depend_on_threads():
    """Each row's (or plane's) sum is one task's, the rows' sums one fixed reduction: the same bits on 1 and 2
    threads."""
    threads = torch.get_num_threads()
    for layout in FORMATS:
        a, b = _maps((3, 48, 17, 19), torch.float32, (layout, layout))
        results = []
        try:
            for n in (1, 2):
                torch.set_num_threads(n)
                results.append(torch.ops.mmoverlock.spatial_dot(a, b))
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(*results)


@requires_op
@pytest.mark.parametrize('layout', list(FORMATS))
def test_opcheck(layout):
    a, b = _maps((2, 16, 5, 6), torch.float32, (layout, layout))
    torch.library.opcheck(torch.ops.mmoverlock.spatial_dot, (a, b))


def test_the_composition_where_the_op_does_not_apply(monkeypatch):
    """bfloat16 maps, and any map when the extension lacks the op, take ``(a * b).sum((2, 3))``."""
    a, b = _maps((2, 4, 3, 5), torch.bfloat16, ('nhwc', 'nhwc'))
    assert not statistics.runs_compiled(a, b)
    torch.testing.assert_close(spatial_dot(a, b), (a * b).sum((2, 3)))
    monkeypatch.setattr(statistics, 'HAS_SPATIAL_DOT', False)
    a, b = _maps((2, 4, 3, 5), torch.float64, ('nchw', 'nchw'))
    torch.testing.assert_close(spatial_dot(a, b), (a * b).sum((2, 3)), rtol=1e-14, atol=0)


@requires_op
@pytest.mark.parametrize('a, b, message', [
    ((2, 3, 4), (2, 3, 4), 'a must be 4-D'),
    ((2, 3, 4, 5), (2, 3, 5, 4), 'b must have the shape of a'),
])
def test_bad_inputs_raise_naming_the_argument(a, b, message):
    with pytest.raises(RuntimeError, match=message):
        torch.ops.mmoverlock.spatial_dot(torch.randn(a), torch.randn(b))


@requires_op
def test_mixed_dtypes_raise_naming_the_argument():
    with pytest.raises(RuntimeError, match='b must have the dtype and device of a'):
        torch.ops.mmoverlock.spatial_dot(torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3, dtype=torch.float64))
