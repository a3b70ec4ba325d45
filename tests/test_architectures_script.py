"""TorchScript: scripted networks and ensembles equal eager, survive save/load, store weights once."""
import io
import zipfile

import pytest
import torch

from nnunet_export.architectures import EnsembleModule, build_network, load_weights, prepare_for_inference

try:
    from . import arch_cases
except ImportError:  # tests/ is not a package: pytest put tests/ on sys.path
    import arch_cases

CASES, CASE_IDS = arch_cases.CASES, arch_cases.CASE_IDS
TOL_SCRIPT = 1e-6

# TorchScript is deprecated upstream but is the export format this package targets.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")


def _loaded(case, seed=0, deep_supervision=None):
    ref = arch_cases.build_reference(case, seed)
    ds = case.deep_supervision if deep_supervision is None else deep_supervision
    net = build_network(case.network_class_name, case.arch_kwargs, case.input_channels, case.output_channels,
                        deep_supervision=ds)
    return load_weights(net, ref.state_dict()).eval(), ref


def _save(module):
    buf = io.BytesIO()
    torch.jit.save(module, buf)
    return buf.getvalue()


def _stored_tensor_bytes(blob):
    # torch.jit.save writes one archive entry per storage under <archive>/data/
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        return sum(i.file_size for i in z.infolist() if "/data/" in i.filename)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_scripted_network_equals_eager_round_trips_and_stores_weights_once(case):
    net, ref = _loaded(case)
    scripted = torch.jit.script(net)
    blob = _save(scripted)
    reloaded = torch.jit.load(io.BytesIO(blob))

    # conv/all_modules and encoder/decoder.encoder aliases are one Parameter each: the file
    # must hold every weight once, and the reloaded module must share them again.
    unique = arch_cases.unique_storage_bytes(net)
    assert sum(t.numel() * t.element_size() for t in net.state_dict().values()) > unique
    assert _stored_tensor_bytes(blob) == unique
    assert arch_cases.unique_storage_bytes(reloaded) == unique

    for size_index in (0, 1):
        x = arch_cases.make_input(case, size_index)
        with torch.no_grad():
            eager = net(x.clone())
            got_scripted = scripted(x.clone())
        assert isinstance(got_scripted, list) == case.deep_supervision
        assert arch_cases.max_abs_diff(got_scripted, eager) <= TOL_SCRIPT
    # the reloaded module runs the same graph: one input size is enough (the tests share 2 cores)
    with torch.no_grad():
        got_reloaded = reloaded(x.clone())
        expected = ref(x.clone())
    assert isinstance(got_reloaded, list) == case.deep_supervision
    assert arch_cases.max_abs_diff(got_reloaded, eager) <= TOL_SCRIPT
    assert arch_cases.max_abs_diff(got_reloaded, expected) <= 1e-5
    # the scripted module keeps dna's state-dict keys, so nnU-Net checkpoints load into it too
    assert list(reloaded.state_dict()) == list(ref.state_dict())
    reloaded.load_state_dict(ref.state_dict(), strict=True)


def test_scripted_return_type_follows_deep_supervision():
    case = arch_cases.case_by_id("plain3d_bn_dropout_nlfirst_ds")
    net, _ = _loaded(case, deep_supervision=False)
    assert "-> Tensor" in str(torch.jit.script(net).forward.schema)
    net_ds, _ = _loaded(case, deep_supervision=True)
    assert "-> Tensor[]" in str(torch.jit.script(net_ds).forward.schema)


def test_prepare_for_inference_refuses_scripted_deep_supervision():
    net, _ = _loaded(arch_cases.case_by_id("plain3d_bn_dropout_nlfirst_ds"), deep_supervision=True)
    scripted = torch.jit.script(net)
    with pytest.raises(ValueError, match="compiled with deep supervision on"):
        prepare_for_inference(scripted)


def test_ensemble_is_mean_of_fold_logits_scripted_and_eager():
    case = arch_cases.case_by_id("plain3d_in_aniso")
    folds = [prepare_for_inference(_loaded(case, seed=s, deep_supervision=False)[0]) for s in range(3)]
    ensemble = prepare_for_inference(EnsembleModule(folds))
    scripted = torch.jit.script(ensemble)
    reloaded = torch.jit.load(io.BytesIO(_save(scripted)))
    x = arch_cases.make_input(case, 1)
    with torch.no_grad():
        # nnU-Net: prediction = fold0; prediction += fold_i; prediction /= n_folds
        expected = folds[0](x)
        for net in folds[1:]:
            expected += net(x)
        expected /= len(folds)
        eager = ensemble(x)
        assert torch.equal(eager, expected)
        assert arch_cases.max_abs_diff(scripted(x), eager) <= TOL_SCRIPT
        assert arch_cases.max_abs_diff(reloaded(x), eager) <= TOL_SCRIPT
        # folds differ, so the mean differs from any single fold
        assert float((eager - folds[0](x)).abs().max()) > 1e-4
    assert list(ensemble.state_dict())[0] == "networks.0." + list(folds[0].state_dict())[0]


def test_ensemble_of_one_returns_that_network_logits():
    case = arch_cases.case_by_id("plain2d_in")
    net, _ = _loaded(case, deep_supervision=False)
    scripted = torch.jit.script(EnsembleModule([net]).eval())
    x = arch_cases.make_input(case, 0)
    with torch.no_grad():
        assert torch.equal(scripted(x), net(x))


def test_ensemble_refuses_deep_supervision_and_empty():
    net, _ = _loaded(arch_cases.case_by_id("plain3d_bn_dropout_nlfirst_ds"), deep_supervision=True)
    with pytest.raises(ValueError, match="network 0 has deep supervision on"):
        EnsembleModule([net])
    with pytest.raises(ValueError, match="network 1 has deep supervision on"):
        EnsembleModule([_loaded(arch_cases.case_by_id("plain3d_bn_dropout_nlfirst_ds"), deep_supervision=False)[0],
                        torch.jit.script(net)])
    with pytest.raises(ValueError, match="at least one network"):
        EnsembleModule([])
