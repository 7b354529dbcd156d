"""Malformed input across the public surface, one table: each row is an input and the outcome it must have.

An outcome is either an exception of a given type whose message matches a pattern that names the argument and the
form expected of it, or a correct result. The rows cover the ``OverLoCK`` constructor, the backbone's ``forward``
(shapes, dtypes, devices, sizes down to 1 x 1, extreme aspect ratios, strided views), checkpoint loading (directly
and through ``init_cfg=dict(type='Pretrained')``), and the command-line tools (train, test, the converter). The
ContMix op's own malformed inputs are the ``test_input_errors`` table of ``tests/test_ops/test_contmix.py``.
"""
import os.path as osp
import runpy
import types
from typing import Callable, NamedTuple, Optional

import numpy as np
import pytest
import torch
from _helpers import REPO_ROOT, SMOKE_DET, SMOKE_SEG, TINY_ARCH, TINY_CHANNELS, run_tool, write_config

from mmoverlock.checkpoint_io import UnsafeCheckpointError
from mmoverlock.models import OverLoCK
from mmoverlock.models.checkpoint import load_overlock_checkpoint


class Case(NamedTuple):
    """One row: ``call(subjects)`` must raise ``raises`` with a message matching ``match``, or, without
    ``raises``, return something that ``check(result, subjects)`` accepts (it asserts)."""
    call: Callable
    raises: Optional[type] = None
    match: str = ''
    check: Optional[Callable] = None


def build(**kwargs) -> OverLoCK:
    return OverLoCK(**dict(dict(arch=TINY_ARCH), **kwargs))


def arch_with(**entries) -> dict:
    return dict(TINY_ARCH, **entries)


def image(*shape, **kwargs) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1), **kwargs)


# ------------------------------------------------------------------------------------------------ result checks
def ceil_div(n: int, d: int) -> int:
    return -(-n // d)


def levels_of(batch: int, height: int, width: int, levels=(0, 1, 2, 3)) -> Callable:
    """A check that the outputs are the given levels of a [batch, 3, height, width] input, all finite."""

    def check(outs, _subjects):
        assert len(outs) == len(levels)
        for out, i in zip(outs, levels):
            assert out.shape == (batch, TINY_CHANNELS[i], ceil_div(height, 2**(i + 2)), ceil_div(width, 2**(i + 2)))
            assert torch.isfinite(out).all()

    return check


def same_as(reference: Callable, model: str = 'model') -> Callable:
    """A check that the outputs equal, bit for bit, the backbone's outputs on ``reference()`` (a contiguous input
    with the same values)."""

    def check(outs, subjects):
        with torch.no_grad():
            expected = getattr(subjects, model)(reference())
        for out, want in zip(outs, expected):
            assert out.shape == want.shape
            assert torch.equal(out, want)

    return check


def runs_image_by_image(x: torch.Tensor) -> Callable:
    """A check that a batch's outputs equal those of its images run one at a time (nothing leaks across images at
    small sizes, where every window is clamped), and are the expected levels.

    Batched and single float32 runs round differently: measured up to 1.1e-6 of a level's largest magnitude (sizes
    1 x 1 to 64 x 64); the bound is 1e-5 of it.
    """

    def check(outs, subjects):
        levels_of(*x.shape[:1], *x.shape[2:])(outs, subjects)
        with torch.no_grad():
            singles = [subjects.model(x[i:i + 1]) for i in range(x.shape[0])]
        for level, out in enumerate(outs):
            expected = torch.cat([s[level] for s in singles])
            assert (out - expected).abs().max() <= 1e-5 * expected.abs().max()

    return check


# ------------------------------------------------------------------------------------------------------ callers
def forward(x_factory: Callable, model: str = 'model') -> Callable:
    def call(subjects):
        with torch.no_grad():
            return getattr(subjects, model)(x_factory())

    return call


def load_file(name: str, model: str = 'model', prefix: Optional[str] = None) -> Callable:
    def call(subjects):
        return load_overlock_checkpoint(getattr(subjects, model), subjects.files[name], prefix=prefix)

    return call


def init_from(name: str) -> Callable:
    def call(subjects):
        model = build(init_cfg=dict(type='Pretrained', checkpoint=subjects.files[name]))
        model.init_weights()
        return model

    return call


def tool(script: str, *args: str) -> Callable:
    """Run a command-line tool's ``main`` in this process; ``{name}`` in the arguments is ``subjects.files[name]``."""

    def call(subjects):
        main = runpy.run_path(osp.join(REPO_ROOT, script))['main']
        return main([a.format(**subjects.files) for a in args])

    return call


def train_in_empty_dir(config: str) -> Callable:
    """tools/train.py as a user runs it, in a folder without the config's data (a subprocess: the runner is built)."""

    def call(subjects):
        with pytest.raises(AssertionError) as failed:
            run_tool(['tools/train.py', config, '--work-dir', subjects.empty_dir / 'work'], cwd=subjects.empty_dir)
        return str(failed.value)

    return call


def log_names(*fragments: str) -> Callable:
    def check(log, _subjects):
        assert all(f in log for f in fragments), log[-3000:]

    return check


TRAIN, TEST, CONVERT = 'tools/train.py', 'tools/test.py', 'tools/model_converters/convert_checkpoint.py'
ARCH_KEYS_MSG = r"\['b', 's', 't', 'xt'\]"
OUT_INDICES_MSG = r'out_indices must be a non-empty sequence of distinct levels in 0\.\.3, got '
FROZEN_MSG = r'frozen_stages must be an int in -1\.\.4, got '
SHAPE_MSG = r'input must be \[B, 3, H, W\], got shape '
UNREADABLE_MSG = r'cannot read the checkpoint .*{}: .*a truncated, empty or non-torch file fails this way'

CASES = {
    # -------------------------------------------------------------------------------- OverLoCK(...) arguments
    'arch_unknown_name': Case(lambda s: build(arch='huge'), KeyError, f"arch must be one of {ARCH_KEYS_MSG} or a "
                              f"dict, got 'huge'"),
    'arch_not_str_or_dict': Case(lambda s: build(arch=['t']), TypeError, 'arch must be a str or a dict, got list'),
    'arch_dict_missing_key': Case(lambda s: build(arch={k: v for k, v in TINY_ARCH.items() if k != 'smk_size'}),
                                  KeyError, r"exactly the keys .*missing \['smk_size'\], unexpected \[\]"),
    'arch_dict_extra_key': Case(lambda s: build(arch=arch_with(heads=4)), KeyError,
                                r"exactly the keys .*missing \[\], unexpected \['heads'\]"),
    'arch_depth_three_stages': Case(lambda s: build(arch=arch_with(depth=[1, 1, 1])), ValueError,
                                    r"arch\['depth'\] must have 4 entries, got \[1, 1, 1\]"),
    'arch_zero_sub_depth': Case(lambda s: build(arch=arch_with(sub_depth=[1, 0])), ValueError,
                                r"arch\['sub_depth'\] must hold positive ints, got \[1, 0\]"),
    'arch_even_kernel_size': Case(lambda s: build(arch=arch_with(kernel_size=[17, 15, 12, 7])), ValueError,
                                  r"arch\['kernel_size'\] entries must be among \[5, 7, 9, 11, 13, 15, 17, 19\]"),
    'arch_even_smk_size': Case(lambda s: build(arch=arch_with(smk_size=4)), ValueError,
                               r"arch\['smk_size'\] must be a positive odd int, got 4"),
    'arch_width_not_split_by_heads': Case(lambda s: build(arch=arch_with(embed_dim=[16, 32, 64, 98])), ValueError,
                                          r"arch\['embed_dim'\]\[3\] = 98 must be a multiple of "
                                          r"4 \* arch\['sub_num_heads'\]\[1\] = 12"),
    'arch_ls_init_value_str': Case(lambda s: build(arch=arch_with(ls_init_value=[None, None, '1', 1])), ValueError,
                                   r"arch\['ls_init_value'\] must hold numbers or None \(no LayerScale\)"),
    'arch_res_scale_not_bool': Case(lambda s: build(arch=arch_with(res_scale='yes')), ValueError,
                                    r"arch\['res_scale'\] must be a bool, got 'yes'"),
    'contmix_backend_unknown': Case(lambda s: build(contmix_backend='natten'), ValueError,
                                    r"contmix_backend must be None \(automatic\) or one of \['cpu', 'cuda', 'torch', "
                                    r"'unfused'\], got 'natten'"),
    'in_channels_zero': Case(lambda s: build(in_channels=0), ValueError, 'in_channels must be a positive int, got 0'),
    'out_indices_above_3': Case(lambda s: build(out_indices=(0, 4)), ValueError, OUT_INDICES_MSG + r'\(0, 4\)'),
    'out_indices_negative': Case(lambda s: build(out_indices=(-1, )), ValueError, OUT_INDICES_MSG + r'\(-1,\)'),
    'out_indices_empty': Case(lambda s: build(out_indices=()), ValueError, OUT_INDICES_MSG + r'\(\)'),
    'out_indices_repeated': Case(lambda s: build(out_indices=[1, 1]), ValueError, OUT_INDICES_MSG + r'\[1, 1\]'),
    'out_indices_one_int': Case(lambda s: build(out_indices=3).out_channels,
                                check=lambda channels, s: channels == [TINY_CHANNELS[3]]),
    'frozen_stages_above_4': Case(lambda s: build(frozen_stages=5), ValueError, FROZEN_MSG + '5'),
    'frozen_stages_below_-1': Case(lambda s: build(frozen_stages=-2), ValueError, FROZEN_MSG + '-2'),
    'frozen_stages_str': Case(lambda s: build(frozen_stages='2'), ValueError, FROZEN_MSG + "'2'"),
    'drop_path_rate_above_1': Case(lambda s: build(drop_path_rate=1.5), ValueError,
                                   r'drop_path_rate must be a number in \[0, 1\), got 1\.5'),
    'memory_format_unknown': Case(lambda s: build(memory_format='nhwc'), ValueError,
                                  r"memory_format must be one of \['auto', 'channels_last', 'contiguous'\], "
                                  r"got 'nhwc'"),
    'pretrained_true_custom_arch': Case(lambda s: build(pretrained=True), ValueError,
                                        f'pretrained=True loads the release of a preset arch, one of {ARCH_KEYS_MSG}'),
    # ------------------------------------------------------------------------------------- forward inputs
    'input_one_channel': Case(forward(lambda: image(1, 1, 64, 64)), ValueError, SHAPE_MSG + r'\(1, 1, 64, 64\)'),
    'input_3d': Case(forward(lambda: image(3, 64, 64)), ValueError, SHAPE_MSG + r'\(3, 64, 64\)'),
    'input_5d': Case(forward(lambda: image(1, 1, 3, 64, 64)), ValueError, SHAPE_MSG + r'\(1, 1, 3, 64, 64\)'),
    'input_numpy': Case(forward(lambda: np.zeros((1, 3, 64, 64), np.float32)), TypeError,
                        r'input must be a Tensor \[B, 3, H, W\], got ndarray'),
    'input_uint8': Case(forward(lambda: torch.zeros(1, 3, 64, 64, dtype=torch.uint8)), TypeError,
                        'input must be a floating-point tensor .*got torch.uint8'),
    'input_int64': Case(forward(lambda: torch.zeros(1, 3, 64, 64, dtype=torch.int64)), TypeError,
                        'input must be a floating-point tensor .*got torch.int64'),
    'input_float64_model_float32': Case(forward(lambda: image(1, 3, 64, 64, dtype=torch.float64)), TypeError,
                                        'input has dtype torch.float64 but the weights have torch.float32'),
    'input_other_device': Case(forward(lambda: torch.zeros(1, 3, 64, 64, device='meta')), ValueError,
                               'input is on meta but the weights are on cpu'),
    'input_zero_height': Case(forward(lambda: image(1, 3, 0, 64)), ValueError,
                              r'input height and width must be >= 1, got \(0, 64\)'),
    'train_batch_too_small_for_batchnorm': Case(
        forward(lambda: image(1, 3, 32, 32), model='training_model'), ValueError,
        r'training with BatchNorm needs batch x ceil\(H / 32\) x ceil\(W / 32\) >= 2, got batch 1 of 32x32'),
    'train_batch_of_one_above_stride': Case(forward(lambda: image(1, 3, 33, 32), model='training_model'),
                                            check=levels_of(1, 33, 32)),
    'input_empty_batch': Case(forward(lambda: image(0, 3, 45, 70)), check=levels_of(0, 45, 70)),
    'input_1x1': Case(forward(lambda: image(2, 3, 1, 1)), check=runs_image_by_image(image(2, 3, 1, 1))),
    'input_below_largest_stride': Case(forward(lambda: image(2, 3, 17, 23)),
                                       check=runs_image_by_image(image(2, 3, 17, 23))),
    'input_odd_33x47': Case(forward(lambda: image(2, 3, 33, 47)), check=runs_image_by_image(image(2, 3, 33, 47))),
    'input_32x2048': Case(forward(lambda: image(1, 3, 32, 2048)), check=levels_of(1, 32, 2048)),
    'input_2048x32': Case(forward(lambda: image(1, 3, 2048, 32)), check=levels_of(1, 2048, 32)),
    'input_channels_last': Case(forward(lambda: image(2, 3, 40, 56).to(memory_format=torch.channels_last)),
                                check=same_as(lambda: image(2, 3, 40, 56))),
    'input_channels_last_into_nchw_model': Case(
        forward(lambda: image(2, 3, 40, 56).to(memory_format=torch.channels_last), model='nchw_model'),
        check=same_as(lambda: image(2, 3, 40, 56), model='nchw_model')),
    'input_strided_view': Case(forward(lambda: image(2, 3, 80, 112)[:, :, ::2, ::2]),
                               check=same_as(lambda: image(2, 3, 80, 112)[:, :, ::2, ::2].contiguous())),
    'input_transposed_view': Case(forward(lambda: image(2, 3, 56, 40).transpose(2, 3)),
                                  check=same_as(lambda: image(2, 3, 56, 40).transpose(2, 3).contiguous())),
    'input_channel_slice_view': Case(forward(lambda: image(2, 5, 40, 56)[:, 1:4]),
                                     check=same_as(lambda: image(2, 5, 40, 56)[:, 1:4].contiguous())),
    'input_expanded_batch': Case(forward(lambda: image(1, 3, 40, 56).expand(2, -1, -1, -1)),
                                 check=same_as(lambda: image(1, 3, 40, 56).repeat(2, 1, 1, 1))),
    # ---------------------------------------------------------------------------------------- checkpoints
    'checkpoint_missing_file': Case(load_file('missing'), FileNotFoundError,
                                    r'checkpoint file .*missing\.pth not found'),
    'checkpoint_truncated': Case(load_file('truncated'), RuntimeError, UNREADABLE_MSG.format(r'truncated\.pth')),
    'checkpoint_empty_file': Case(load_file('zero_bytes'), RuntimeError, UNREADABLE_MSG.format(r'zero_bytes\.pth')),
    'checkpoint_text_file': Case(load_file('text'), UnsafeCheckpointError,
                                 r'refusing to load the checkpoint .*text\.pth: .*not a torch checkpoint at all'),
    # bytes that torch reads as its legacy format, whose reader fails with a bare KeyError / IndexError
    'checkpoint_other_bytes': Case(load_file('other_bytes'), RuntimeError, UNREADABLE_MSG.format(r'other_bytes\.pth')),
    'checkpoint_three_bytes': Case(load_file('three_bytes'), RuntimeError, UNREADABLE_MSG.format(r'three_bytes\.pth')),
    'checkpoint_a_tensor': Case(load_file('tensor'), TypeError, r'the checkpoint holds no state dict \(got Tensor\)'),
    'checkpoint_empty_state_dict': Case(load_file('empty_state_dict'), ValueError,
                                        r'empty_state_dict\.pth holds an empty state dict'),
    'checkpoint_not_a_dict': Case(load_file('list'), TypeError, r'the checkpoint holds no state dict \(got list\)'),
    'checkpoint_other_variant': Case(load_file('other_variant'), ValueError,
                                     r"looks like an OverLoCK variant with \{'depth': \[1, 1, 2, 1\].*"
                                     r"set arch to match the checkpoint"),
    'checkpoint_deploy_form_into_training_form': Case(load_file('deploy'), ValueError,
                                                      r'deploy \(re-parameterised\) form; build the backbone with '
                                                      r'deploy=True'),
    'checkpoint_training_form_into_deploy_form': Case(load_file('trained', model='deploy_model'), ValueError,
                                                      'in training form but the backbone has deploy=True'),
    'checkpoint_of_another_network': Case(load_file('resnet'), KeyError,
                                          r'has no patch_embed2\.0\.weight; it is not an OverLoCK backbone'),
    'checkpoint_prefix_absent': Case(load_file('trained', prefix='neck'), KeyError,
                                     r"no keys under the prefix 'neck\.'"),
    'init_cfg_pretrained_missing_file': Case(init_from('missing'), FileNotFoundError,
                                             r'checkpoint file .*missing\.pth not found'),
    'init_cfg_pretrained_truncated': Case(init_from('truncated'), RuntimeError,
                                          UNREADABLE_MSG.format(r'truncated\.pth')),
    'init_cfg_pretrained_detector_checkpoint': Case(
        init_from('detector'), check=lambda model, s: all(
            torch.equal(v, s.model.state_dict()[k]) for k, v in model.state_dict().items())),
    # ----------------------------------------------------------------------------------- converter and tools
    'train_missing_config': Case(tool(TRAIN, '{missing_config}'), FileNotFoundError, r'no_such_config\.py'),
    'train_config_of_unknown_scope': Case(tool(TRAIN, '{other_scope}'), ValueError,
                                          r"config of .*other_scope\.py has default_scope 'mmpretrain'; expected "
                                          r"one of \('mmdet', 'mmseg'\)"),
    'test_missing_config': Case(tool(TEST, '{missing_config}', '{trained}'), FileNotFoundError,
                                r'no_such_config\.py'),
    'test_missing_checkpoint': Case(tool(TEST, SMOKE_SEG, '{missing}'), FileNotFoundError,
                                    r"checkpoint '.*missing\.pth' does not exist"),
    'convert_missing_source': Case(tool(CONVERT, '{missing}', '{out}'), FileNotFoundError,
                                   r'checkpoint file .*missing\.pth not found'),
    'convert_truncated_source': Case(tool(CONVERT, '{truncated}', '{out}'), RuntimeError,
                                     UNREADABLE_MSG.format(r'truncated\.pth')),
    'convert_missing_config': Case(tool(CONVERT, '{trained}', '{out}', '--config', '{missing_config}'),
                                   FileNotFoundError, r'no_such_config\.py'),
    'train_segmentor_missing_data_root': Case(train_in_empty_dir(SMOKE_SEG), check=log_names(
        'FileNotFoundError', 'data/generated/ade/images/training')),
    'train_detector_missing_data_root': Case(train_in_empty_dir(SMOKE_DET), check=log_names(
        'FileNotFoundError', 'data/generated/coco/annotations/instances_train.json')),
}


@pytest.fixture(scope='module')
def subjects(tmp_path_factory):
    """The backbones the rows call (eval mode unless named otherwise) and the files they read."""
    torch.manual_seed(0)
    model = build().eval()
    model.init_weights()
    folder = tmp_path_factory.mktemp('bad_input')
    files = {name: str(folder / f'{name}.pth') for name in (
        'missing', 'trained', 'truncated', 'zero_bytes', 'text', 'other_bytes', 'three_bytes', 'empty_state_dict', 'list', 'tensor', 'other_variant',
        'deploy', 'resnet', 'detector', 'out')}
    torch.save(model.state_dict(), files['trained'])
    with open(files['trained'], 'rb') as f:
        data = f.read()
    with open(files['truncated'], 'wb') as f:
        f.write(data[:len(data) // 2])
    open(files['zero_bytes'], 'wb').close()
    with open(files['text'], 'w') as f:
        f.write('not a checkpoint\n')
    with open(files['other_bytes'], 'w') as f:
        f.write('hello world\n')
    with open(files['three_bytes'], 'wb') as f:
        f.write(b'abc')
    torch.save(dict(state_dict={}, meta={}), files['empty_state_dict'])
    torch.save([1, 2], files['list'])
    torch.save(torch.zeros(3), files['tensor'])
    torch.save(build(arch=arch_with(depth=[1, 1, 2, 1])).state_dict(), files['other_variant'])
    torch.save(build(deploy=True).state_dict(), files['deploy'])
    torch.save({'conv1.weight': torch.zeros(64, 3, 7, 7), 'fc.weight': torch.zeros(10, 64)}, files['resnet'])
    torch.save(dict(state_dict={f'backbone.{k}': v for k, v in model.state_dict().items()}), files['detector'])
    files['missing_config'] = str(folder / 'no_such_config.py')
    files['other_scope'] = write_config(folder / 'other_scope.py', SMOKE_SEG, "default_scope = 'mmpretrain'\n")
    empty_dir = folder / 'empty'
    empty_dir.mkdir()
    training_model = build().train()
    deploy_model = build(deploy=True).eval()
    nchw_model = build(memory_format='contiguous').eval()
    nchw_model.load_state_dict(model.state_dict())
    return types.SimpleNamespace(model=model, training_model=training_model, deploy_model=deploy_model,
                                 nchw_model=nchw_model, files=files, empty_dir=empty_dir)


#: Rows that run tools/train.py in a subprocess (about 12-14 s each on 2 loaded cores): left out of `make test-fast`.
SUBPROCESS_CASES = ('train_segmentor_missing_data_root', 'train_detector_missing_data_root')


@pytest.mark.parametrize('case', [
    pytest.param(case, id=name, marks=pytest.mark.slow if name in SUBPROCESS_CASES else ())
    for name, case in CASES.items()
])
def test_bad_input(case, subjects):
    if case.raises is not None:
        with pytest.raises(case.raises, match=case.match):
            case.call(subjects)
    else:
        case.check(case.call(subjects), subjects)


def test_every_row_has_exactly_one_outcome():
    assert all((case.raises is None) != (case.check is None) for case in CASES.values())
