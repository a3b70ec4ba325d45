"""An export prints none of torch's TorchScript deprecation warnings (the package uses those APIs
on purpose) and still lets every other warning through, and leaves the filters as it found them."""
import warnings

import pytest
import torch

import nnunet_export
from nnunet_export.export_writer import quiet_torchscript

DEPRECATED = "`torch.jit.script` is deprecated. Please switch to `torch.compile` or `torch.export`."


@pytest.fixture(scope="module")
def model(nnunet_fixture):
    return nnunet_export.load_complete(nnunet_fixture("2d").model_dir, folds=0)


@pytest.mark.parametrize("method", ["script", "trace"])
def test_torchscript_export_prints_no_torchscript_deprecation(model, tmp_path, method):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nnunet_export.to_torchscript(model, tmp_path / "model.pt", method=method)
    jit = [str(w.message) for w in caught if "torch.jit" in str(w.message)]
    assert jit == []


def test_torchscript_calls_outside_an_export_still_warn():
    # The filter is scoped: the same call warns again once the export is over.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_torchscript():
            torch.jit.script(torch.nn.ReLU())
        inside = len(caught)
        torch.jit.script(torch.nn.ReLU())
    assert inside == 0
    assert [str(w.message) for w in caught] == [DEPRECATED]


def test_other_warnings_pass_through_the_filter():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_torchscript():
            warnings.warn("`torch.jit.something_else` is deprecated", DeprecationWarning)
            warnings.warn("a user's own warning", UserWarning)
    assert [str(w.message) for w in caught] == ["`torch.jit.something_else` is deprecated",
                                                "a user's own warning"]
