"""The classification form (``OverLoCKClassifier``, timm's ``overlock_*``): parity with the authors' ImageNet model in
float64 (the classification entry of tests/data/reference/tiny_references.pt.xz, 1e-9 relative), the released state-dict layouts, and timm's
model interface (presets and overrides, pretrained loading from a local file, feature extraction, fine-tuning)."""

import pytest
import timm
import torch
from torch.nn import functional as F

from _helpers import TINY_ARCH, assert_matches_manifest, rel_err
from _helpers.reference_data import load_reference
from mmoverlock.models import AuxiliaryLoss, OverLoCK, OverLoCKClassifier, classifier_from_checkpoint
from mmoverlock.models.arch import ARCH_KEYS

TOLERANCE = 1e-9
VARIANTS = ('xt', 't', 's', 'b')


@pytest.fixture(scope='module')
def reference(reference_dir):
    return load_reference(reference_dir, 'classification')


def build_reference_model(ref) -> OverLoCKClassifier:
    model = OverLoCKClassifier(arch=ref['arch'], num_classes=ref['num_classes'], projection=ref['projection'],
                               aux_head=True)
    model = model.double()
    model.load_state_dict(ref['state_dict'], strict=True)
    return model


def test_eval_logits_and_input_gradient_match_authors(reference):
    """Parameter gradients are compared for the backbone (test_overlock_parity.py); the compact reference keeps the
    classifier's logits and input gradient."""
    case = reference['eval_case']
    model = build_reference_model(reference).eval()
    x = case['input'].clone().requires_grad_(True)
    logits = model(x)
    (logits * case['out_weight']).sum().backward()
    errors = dict(logits=rel_err(logits.detach(), case['logits']), input_grad=rel_err(x.grad, case['input_grad']))
    params = dict(model.named_parameters())
    # The eval-mode logits depend on every parameter but the auxiliary head's.
    assert all(params[k].grad is None for k in params if k.startswith('aux_head.'))
    assert all(params[k].grad is not None for k in params if not k.startswith('aux_head.'))
    print(', '.join(f'{k}={v:.2e}' for k, v in errors.items()))
    assert max(errors.values()) <= TOLERANCE, errors


def test_training_mode_main_and_aux_logits_match_authors(reference):
    case = reference['train_case']
    model = build_reference_model(reference).train()  # BN on batch statistics, unfolded dilated branches
    x = case['input'].clone().requires_grad_(True)
    main, aux = model(x)  # the opt-in training form (aux_head=True): (logits, aux_logits)
    ((main * case['main_weight']).sum() + (aux * case['aux_weight']).sum()).backward()
    errors = dict(main=rel_err(main.detach(), case['main']), aux=rel_err(aux.detach(), case['aux']),
                  input_grad=rel_err(x.grad, case['input_grad']))
    print(', '.join(f'{k}={v:.2e}' for k, v in errors.items()))
    assert max(errors.values()) <= TOLERANCE, errors


def test_deploy_logits_match_authors(reference, tmp_path):
    model = build_reference_model(reference).eval().switch_to_deploy()
    with torch.no_grad():
        err = rel_err(model(reference['eval_case']['input']), reference['deploy_logits'])
    assert err <= TOLERANCE, f'relative error {err:.2e}'
    # The folded weights load strictly into a model built in deploy form, which gives the same logits.
    rebuilt = OverLoCKClassifier(arch=reference['arch'], num_classes=reference['num_classes'],
                                 projection=reference['projection'], aux_head=True, deploy=True).double().eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert rel_err(rebuilt(reference['eval_case']['input']), reference['deploy_logits']) <= TOLERANCE


@pytest.mark.parametrize('deploy', [False, True], ids=['train', 'deploy'])
@pytest.mark.parametrize('variant', VARIANTS)
def test_state_dict_matches_manifest(official_manifest, variant, deploy):
    entry = official_manifest[f'classification/overlock_{variant}' + ('/deploy' if deploy else '')]
    with torch.device('meta'):  # the releases' layout is the training form's, with the auxiliary head
        model = timm.create_model(f'overlock_{variant}', deploy=deploy, aux_head=True)
        default = timm.create_model(f'overlock_{variant}', deploy=deploy)
    assert isinstance(model, OverLoCKClassifier)
    assert_matches_manifest(model, entry)
    assert set(default.state_dict()) == {k for k in model.state_dict() if not k.startswith('aux_head.')}


@pytest.mark.parametrize('variant,crop_pct', [('xt', 0.925), ('t', 0.95), ('s', 0.95), ('b', 0.975)])
def test_pretrained_cfg_names_the_release_and_its_eval_transform(variant, crop_pct):
    with torch.device('meta'):
        model = timm.create_model(f'overlock_{variant}')
    cfg = model.pretrained_cfg
    assert cfg['url'] == f'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_{variant}_in1k_224.pth'
    assert cfg['classifier'] == 'head.4' and cfg['num_classes'] == 1000
    data_cfg = timm.data.resolve_data_config({}, model=model)
    assert data_cfg == dict(input_size=(3, 224, 224), interpolation='bicubic', mean=(0.485, 0.456, 0.406),
                            std=(0.229, 0.224, 0.225), crop_pct=crop_pct, crop_mode='center')
    with torch.device('meta'):
        deploy = timm.create_model(f'overlock_{variant}', deploy=True)
    assert deploy.pretrained_cfg['url'].endswith(f'overlock_{variant}_in1k_224_reparam.pth')
    with torch.device('meta'):
        tagged = timm.create_model(f'overlock_{variant}.in1k_reparam')
    assert tagged.deploy and tagged.pretrained_cfg['url'] == deploy.pretrained_cfg['url']


def test_keyword_arguments_override_the_preset():
    overrides = dict(depth=[1, 1, 1, 1], embed_dim=[16, 32, 64, 96], sub_depth=[2, 2], mlp_ratio=[2, 2, 2, 2],
                     sub_mlp_ratio=[2, 2], sub_num_heads=[2, 3])
    model = timm.create_model('overlock_t', num_classes=10, projection=64, drop_path_rate=0.1, drop_rate=0.2,
                              aux_head=True, **overrides)
    assert model.arch == dict(OverLoCK.arch_settings['t'], **overrides)
    assert set(model.arch) == set(ARCH_KEYS)
    assert model.head[4].out_channels == 10 and model.aux_head[2].out_channels == 10
    assert model.head[0].out_channels == 64 and model.head_drop.p == 0.2
    assert model.sub_blocks4[-1].drop_path.drop_prob == pytest.approx(0.1)
    with pytest.raises(TypeError, match='by the model name'):
        timm.create_model('overlock_t', arch='s')
    with pytest.raises(ValueError, match='num_classes'):
        OverLoCKClassifier(arch=TINY_ARCH, num_classes=-1)


#: Overrides that shrink a preset for the tests that load, run or train whole models (the layout stays the preset's).
SHALLOW = dict(depth=[1, 1, 1, 1], sub_depth=[2, 2])


def _release_like(model: OverLoCKClassifier, path, wrap='model'):
    """A checkpoint file laid out like the authors' releases, with random weights that differ from ``model``'s."""
    torch.manual_seed(1)
    state_dict = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save({wrap: state_dict}, path)
    return state_dict


@pytest.mark.parametrize('deploy', [False, True], ids=['train', 'deploy'])
def test_pretrained_loads_a_release_strictly(tmp_path, deploy):
    """``pretrained=True`` goes through timm's loader; ``pretrained_cfg_overlay=dict(file=...)`` points it at a local
    copy of the release instead of the URL (no network here)."""
    source = timm.create_model('overlock_t', deploy=deploy, aux_head=True, **SHALLOW)
    state_dict = _release_like(source, tmp_path / 'release.pth')
    for aux_head in (True, False):  # the auxiliary head's weights are loaded where the model has one
        model = timm.create_model('overlock_t', pretrained=True, deploy=deploy, aux_head=aux_head, **SHALLOW,
                                  pretrained_cfg_overlay=dict(file=str(tmp_path / 'release.pth')))
        loaded = model.state_dict()
        assert set(loaded) == {k for k in state_dict if aux_head or not k.startswith('aux_head.')}
        assert all(torch.equal(v, state_dict[k]) for k, v in loaded.items())


def test_pretrained_into_new_classes_keeps_all_but_the_classifiers(tmp_path):
    source = timm.create_model('overlock_t', aux_head=True, **SHALLOW)
    state_dict = _release_like(source, tmp_path / 'release.pth', wrap='state_dict')
    model = timm.create_model('overlock_t', pretrained=True, num_classes=10, aux_head=True, **SHALLOW,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / 'release.pth')))
    loaded = model.state_dict()
    classifier_keys = {f'{name}.{p}' for name in ('head.4', 'aux_head.2') for p in ('weight', 'bias')}
    assert set(loaded) == set(state_dict)
    assert all(torch.equal(loaded[k], v) for k, v in state_dict.items() if k not in classifier_keys)
    assert loaded['head.4.weight'].shape == (10, 1024, 1, 1) and loaded['aux_head.2.bias'].shape == (10,)


def test_pretrained_of_the_wrong_variant_or_form_fails_clearly(tmp_path):
    _release_like(timm.create_model('overlock_xt', **SHALLOW), tmp_path / 'xt.pth')
    with pytest.raises(ValueError, match=r"looks like .*embed_dim.*56.* but this model is .*embed_dim.*64"):
        timm.create_model('overlock_t', pretrained=True, **SHALLOW,
                          pretrained_cfg_overlay=dict(file=str(tmp_path / 'xt.pth')))
    with pytest.raises(ValueError, match='training form but the backbone has deploy=True'):
        timm.create_model('overlock_xt', pretrained=True, deploy=True, **SHALLOW,
                          pretrained_cfg_overlay=dict(file=str(tmp_path / 'xt.pth')))


def test_features_only_gives_the_four_maps():
    torch.manual_seed(0)
    model = timm.create_model('overlock_xt', features_only=True, depth=[1, 1, 1, 1], sub_depth=[2, 2]).eval()
    assert model.feature_info.channels() == [56, 112, 340, 420]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert not any(k.startswith(('model.head.', 'model.aux_head.')) for k in model.state_dict())
    with torch.no_grad():
        feats = model(torch.rand(2, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(2, 56, 16, 24), (2, 112, 8, 12), (2, 340, 4, 6), (2, 420, 2, 3)]
    some = timm.create_model('overlock_xt', features_only=True, out_indices=(1, 3), depth=[1, 1, 1, 1],
                             sub_depth=[2, 2]).eval()
    with torch.no_grad():
        assert [f.shape[1] for f in some(torch.rand(1, 3, 64, 64))] == [112, 420]


def _cross_entropy_step(model, x, y):
    """One SGD step on the authors' training loss (main + 0.4 x auxiliary cross-entropy); the loss and the
    parameters (name -> value) before the step."""
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    main, aux = out = model(x)
    assert main.shape == aux.shape == (len(y), model.num_classes)
    loss = AuxiliaryLoss(F.cross_entropy)(out, y)
    assert torch.equal(loss, F.cross_entropy(main, y) + 0.4 * F.cross_entropy(aux, y))
    loss.backward()
    optimizer.step()
    return loss.detach(), before


def test_training_step_updates_every_parameter():
    torch.manual_seed(0)
    model = timm.create_model('overlock_xt', num_classes=10, aux_head=True, **SHALLOW).train()
    loss, before = _cross_entropy_step(model, torch.randn(2, 3, 64, 64), torch.tensor([3, 7]))
    assert torch.isfinite(loss)
    unchanged = [k for k, v in model.named_parameters() if torch.equal(v, before[k])]
    assert not unchanged, unchanged


def test_fine_tuning_the_named_preset_on_new_classes():
    """``timm.create_model('overlock_t', num_classes=10)``: a step that trains the new heads and the last stage (the
    rest frozen, which also keeps the test cheap) and leaves the frozen weights alone."""
    torch.manual_seed(0)
    model = timm.create_model('overlock_t', num_classes=10, aux_head=True).train()
    trained = ('head.', 'aux_head.', 'sub_blocks4.')
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(trained))
    loss, before = _cross_entropy_step(model, torch.randn(2, 3, 64, 64), torch.tensor([3, 7]))
    assert torch.isfinite(loss)
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert changed == {k for k, _ in model.named_parameters() if k.startswith(trained)}


def test_classifier_from_checkpoint_reads_form_and_class_count(tmp_path):
    model = timm.create_model('overlock_xt', num_classes=7, **SHALLOW).eval().switch_to_deploy()
    state_dict = _release_like(model, tmp_path / 'xt_reparam.pth')
    loaded = classifier_from_checkpoint('overlock_xt', str(tmp_path / 'xt_reparam.pth'), **SHALLOW)
    assert loaded.deploy and loaded.num_classes == 7
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state_dict.items())
    with pytest.raises(ValueError, match=r"model_name must be one of \['overlock_xt'"):
        classifier_from_checkpoint('resnet18', str(tmp_path / 'xt_reparam.pth'))


def test_reset_classifier_and_pre_logits():
    torch.manual_seed(0)
    model = timm.create_model('overlock_xt', num_classes=10, aux_head=True, **SHALLOW)
    model.reset_classifier(5)
    assert model.num_classes == 5 and model.get_classifier() is model.head[4]
    assert model.head[4].out_channels == model.aux_head[2].out_channels == 5
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 5)
        assert model.forward_features(x).shape == (2, model.num_features, 2, 2) and model.num_features == 420
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, model.head_hidden_size)
        model.reset_classifier(0)  # no last convs: pooled features out of both heads
        main, aux = model.train()(x)
        assert main.shape == (2, 1024) and aux.shape == (2, 336)
        model.reset_classifier(0, '')  # no pooling either: the maps
        main, aux = model(x)
        assert main.shape == (2, 1024, 2, 2) and aux.shape == (2, 336, 2, 2)


def test_training_mode_returns_the_logits_unless_the_auxiliary_head_is_opted_in():
    """timm's contract: ``forward`` gives the logits in training mode too; ``aux_head=True`` (or
    ``set_aux_training()``) is what makes it return ``(logits, aux_logits)``."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    model = timm.create_model('overlock_xt', num_classes=10, **SHALLOW).train()
    assert model.aux_head is None and model(x).shape == (2, 10)
    with pytest.raises(RuntimeError, match='aux_head=True'):
        model.set_aux_training()
    model = timm.create_model('overlock_xt', num_classes=10, aux_head=True, **SHALLOW).train()
    main, aux = model(x)
    model.set_aux_training(False)
    with torch.no_grad():
        assert model(x).shape == (2, 10)
        model.set_aux_training(True)
        assert isinstance(model(x), tuple) and model.eval()(x).shape == (2, 10)


def test_reset_classifier_keeps_device_dtype_and_mode():
    with torch.device('meta'):
        model = timm.create_model('overlock_xt', aux_head=True, **SHALLOW).to(torch.float64).eval()
    model.reset_classifier(7)
    for conv in (model.head[4], model.aux_head[2]):
        assert conv.weight.device.type == 'meta' and conv.weight.dtype == torch.float64 and not conv.training
        assert conv.out_channels == 7


def test_traced_and_fx_forms_match_and_scripting_is_refused_clearly():
    """``torch.jit.trace`` and ``torch.fx`` (with timm's no-trace lists) give the eager logits; ``torch.jit.script``
    fails with the reason and the alternatives."""
    torch.manual_seed(0)
    model = timm.create_model('overlock_xt', num_classes=10, **SHALLOW).eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        expected = model(x)
        traced = torch.jit.trace(model, x)
        extractor = timm.models.create_feature_extractor(model, ['head.4'])
        assert torch.allclose(traced(x), expected, rtol=1e-4, atol=1e-5)
        assert torch.allclose(extractor(x)['head.4'].flatten(1), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match='torch.jit.script cannot compile OverLoCK.*torch.jit.trace'):
        torch.jit.script(model)


def test_the_authors_loss_through_timms_training_task():
    """The documented recipe: ``timm.task.ClassificationTask`` with ``AuxiliaryLoss`` trains both heads."""
    from timm.task import ClassificationTask

    torch.manual_seed(0)
    model = timm.create_model('overlock_xt', num_classes=10, aux_head=True, **SHALLOW).train()
    task = ClassificationTask(model, criterion=AuxiliaryLoss(torch.nn.CrossEntropyLoss()), verbose=False)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 2])
    result = task(x, y)
    main, aux = result['output']
    assert torch.equal(result['loss'], F.cross_entropy(main, y) + 0.4 * F.cross_entropy(aux, y))
    result['loss'].backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(TypeError, match='AuxiliaryLoss: output must be logits or a'):
        AuxiliaryLoss(F.cross_entropy)({'main': main}, y)
    with pytest.raises(ValueError, match='aux_ratio must be a number >= 0'):
        AuxiliaryLoss(F.cross_entropy, aux_ratio=-1)
