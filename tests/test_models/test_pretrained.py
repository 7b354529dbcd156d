"""``OverLoCK(pretrained=...)``: ``True`` names the authors' ImageNet release of the arch (their ``overlock_t(
pretrained=True)`` idiom), a string is still a path or URL. Nothing here downloads: the release URLs are checked as
the init_cfg they produce, and loading is checked with a local file."""
import pytest
import torch
from mmengine.registry import MODELS

from mmoverlock.models import OverLoCK

TINY_ARCH = dict(depth=[1, 1, 1, 1], sub_depth=[2, 2], embed_dim=[16, 32, 64, 96], kernel_size=[17, 15, 13, 7],
                 mlp_ratio=[2, 2, 2, 2], sub_mlp_ratio=[2, 2], sub_num_heads=[2, 3], smk_size=5,
                 ls_init_value=[None, None, 1, 1], res_scale=True)
# The authors' release files (their README's model table; the re-parameterised form for deploy=True).
RELEASES = {
    ('xt', False): 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_xt_in1k_224.pth',
    ('t', False): 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_t_in1k_224.pth',
    ('s', False): 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_s_in1k_224.pth',
    ('b', False): 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_b_in1k_224.pth',
    ('xt', True): 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_xt_in1k_224_reparam.pth',
    ('t', True): 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_t_in1k_224_reparam.pth',
    ('s', True): 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_s_in1k_224_reparam.pth',
    ('b', True): 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_b_in1k_224_reparam.pth',
}


@pytest.mark.parametrize('arch,deploy', sorted(RELEASES), ids=lambda x: str(x))
def test_pretrained_true_names_the_release_of_the_arch(arch, deploy):
    with torch.device('meta'):
        model = OverLoCK(arch=arch, deploy=deploy, pretrained=True)
    assert model.init_cfg == dict(type='Pretrained', checkpoint=RELEASES[arch, deploy])


def test_pretrained_true_from_a_config_dict():
    """The authors' ``backbone=dict(type='overlock_t', pretrained=True)`` written for this package."""
    with torch.device('meta'):
        model = MODELS.build(dict(type='OverLoCK', arch='s', overview_fusion=True, drop_path_rate=0.4,
                                  pretrained=True))
    assert model.init_cfg == dict(type='Pretrained', checkpoint=RELEASES['s', False])


def test_pretrained_false_or_none_loads_nothing():
    for value in (False, None):
        assert OverLoCK(arch=TINY_ARCH, pretrained=value).init_cfg is None


def test_bad_pretrained_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match=r"pretrained=True .*preset arch.*\['b', 's', 't', 'xt'\]"):
        OverLoCK(arch=TINY_ARCH, pretrained=True)
    with pytest.raises(ValueError, match='either pretrained or init_cfg'):
        OverLoCK(arch='t', pretrained=True, init_cfg=dict(type='Pretrained', checkpoint='x.pth'))
    with pytest.raises(TypeError, match='pretrained must be True, False, None or a checkpoint path'):
        OverLoCK(arch='t', pretrained=1)


def test_pretrained_path_string_still_loads_a_local_file(tmp_path):
    torch.manual_seed(0)
    source = OverLoCK(arch=TINY_ARCH, overview_fusion=True)
    state_dict = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in source.state_dict().items()}
    torch.save({'state_dict': state_dict}, tmp_path / 'tiny.pth')
    with pytest.warns(UserWarning, match='pretrained=<path> is deprecated'):
        model = OverLoCK(arch=TINY_ARCH, overview_fusion=True, pretrained=str(tmp_path / 'tiny.pth'))
    assert model.init_cfg == dict(type='Pretrained', checkpoint=str(tmp_path / 'tiny.pth'))
    model.init_weights()
    assert model.pretrained_load_result.missing_keys == [] and model.pretrained_load_result.unexpected_keys == []
    assert all(torch.equal(v, state_dict[k]) for k, v in model.state_dict().items())
