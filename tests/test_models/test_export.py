"""Export of the deploy-form backbone with the pure-torch ContMix: ``torch.export``, and ONNX run in onnxruntime.

The compiled operator has no ONNX form, so exports use the ``'torch'`` backend (forced here through
``MMOVERLOCK_CONTMIX_BACKEND``), which records its compact formulation while torch.export or jit tracing runs.
"""
import onnxruntime
import pytest
import torch

from mmoverlock.models import OverLoCK
from mmoverlock.ops.contmix import BACKEND_ENV

# Runs command-line tools, whole models or configs: left out of `make test-fast`.
pytestmark = pytest.mark.slow

# One block per stage keeps the export quick; the kernel sizes are the model's own, and a 64x96 image makes the
# ContMix blocks resize their 4x6 (stage 3) and 2x3 (stage 4) maps to 13x19 and 7x10.
SMALL_ARCH = dict(depth=[1, 1, 1, 1], sub_depth=[1, 1], embed_dim=[16, 32, 64, 96], kernel_size=[17, 15, 13, 7],
                  mlp_ratio=[2, 2, 2, 2], sub_mlp_ratio=[2, 2], sub_num_heads=[2, 3], smk_size=5,
                  ls_init_value=[None, None, 1, 1], res_scale=True)
# Largest error measured relative to each level's largest magnitude (outputs up to ~4): torch.export vs eager
# 1.4e-7 (the exported formulation sums the taps in another order), onnxruntime vs eager 5.7e-7: 9x margin.
RELATIVE_TOL = 5e-6


@pytest.fixture(scope='module')
def exported():
    """(image, eager outputs, ExportedProgram) of a deploy-form model with non-zero biases."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(BACKEND_ENV, 'torch')
        torch.manual_seed(0)
        model = OverLoCK(arch=SMALL_ARCH, overview_fusion=True, deploy=True).eval()
        model.init_weights()
        with torch.no_grad():  # zero-initialised: left so, the position bias and GRN would not be checked
            for name, param in model.named_parameters():
                if name.rsplit('.', 1)[-1] in ('rpb1', 'rpb2', 'gamma', 'beta'):
                    param.normal_(0, 0.5)
        image = torch.randn(1, 3, 64, 96)
        with torch.no_grad():
            expected = model(image)
        program = torch.export.export(model, (image, ))
    return image, expected, program


def assert_levels_close(actual, expected):
    assert len(actual) == len(expected) == 4
    for level, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape, level
        scale = e.abs().max().item()
        torch.testing.assert_close(a, e, rtol=0, atol=RELATIVE_TOL * scale, msg=lambda m, i=level: f'level {i}: {m}')


def test_torch_export_matches_eager(exported):
    image, expected, program = exported
    targets = {str(node.target) for node in program.graph.nodes if node.op == 'call_function'}
    assert not [t for t in targets if 'mmoverlock' in t], 'the compiled ContMix op was recorded'
    with torch.no_grad():
        assert_levels_close(program.module()(image), expected)


def test_onnx_matches_onnxruntime(exported, tmp_path):
    image, expected, program = exported
    path = tmp_path / 'overlock.onnx'
    torch.onnx.export(program, (image, ), dynamo=True).save(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    outputs = session.run(None, {session.get_inputs()[0].name: image.numpy()})
    assert_levels_close([torch.from_numpy(o) for o in outputs], expected)
