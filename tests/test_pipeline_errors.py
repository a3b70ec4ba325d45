"""Bad input to a Pipeline gets a clear error naming what is wrong, eager and scripted alike, and
building or running one leaves torch's process state as it was."""
import pytest
import torch

import nnunet_export
from nnunet_export import PipelineInputError, PipelineSettingsError


@pytest.fixture(scope="module")
def model(nnunet_fixture):
    return nnunet_export.load_complete(nnunet_fixture("3d_fullres").model_dir, folds=0)


@pytest.fixture(scope="module")
def pipelines(model):
    pipeline = model.pipeline()
    return {"eager": pipeline, "scripted": torch.jit.script(pipeline)}


def _nan_only():
    return torch.full((1, 4, 5, 6), float("nan"))


BAD_INPUTS = [
    ("rank", lambda: torch.zeros(1, 5, 6), "data must have 4 dimensions (channels, x, y, z), got 3: shape [1, 5, 6]"),
    ("channels", lambda: torch.zeros(2, 4, 5, 6), "data has 2 channels, this model takes 1 (image channels)"),
    ("dtype", lambda: torch.zeros(1, 4, 5, 6, dtype=torch.int16),
     "data must be a floating-point tensor (preprocessed float32), got torch.int16"),
    ("empty", lambda: torch.zeros(1, 0, 5, 6), "data has no voxels: shape [1, 0, 5, 6]"),
    ("nan", _nan_only, "data holds only NaN values: nothing to predict"),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda c: c[0])
def test_bad_input_is_refused_with_its_reason(case, pipelines):
    _, make, message = case
    with pytest.raises(PipelineInputError) as error:
        pipelines["eager"].predict_logits(make())
    assert str(error.value) == message
    # Inside TorchScript the same check raises the same message, with the class named.
    with pytest.raises(torch.jit.Error) as error:
        pipelines["scripted"].predict_logits(make())
    scripted_message = message.replace("got torch.int16", "got a tensor of another dtype")
    assert str(error.value).rstrip().endswith(f"nnunet_export.pipeline.errors.PipelineInputError: {scripted_message}")


def _image(*shape, value=100.0):
    return torch.full(shape, value)


GOOD_SPACING = torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64)

# (id, image, spacing, message) for preprocess / forward / predict_with_probabilities.
BAD_IMAGES = [
    ("rank", _image(5, 6, 7), GOOD_SPACING,
     "image must have 4 dimensions (channels, z, y, x; a 2-D image as (channels, 1, y, x)), got 3: shape [5, 6, 7]"),
    ("channels", _image(2, 5, 6, 7), GOOD_SPACING, "image has 2 channels, this model takes 1"),
    ("empty", _image(1, 0, 6, 7), GOOD_SPACING, "image has no voxels: shape [1, 0, 6, 7]"),
    ("bool", torch.ones(1, 5, 6, 7, dtype=torch.bool), GOOD_SPACING,
     "image must hold real numbers (nnU-Net reads every image as float32)"),
    ("nan", torch.tensor([float("nan"), 1.0, float("inf"), 2.0]).reshape(1, 1, 2, 2), GOOD_SPACING,
     "image holds 2 non-finite values (NaN or inf); nnU-Net's normalization would spread them over the whole channel"),
    ("spacing_length", _image(1, 5, 6, 7), torch.tensor([1.0, 1.0], dtype=torch.float64),
     "spacing must hold 3 values (one per image axis, as nnU-Net's reader gives them), got shape [2]"),
    ("spacing_float32", _image(1, 5, 6, 7), torch.tensor([2.0, 1.0, 1.0]),
     "spacing must be float64 (as nnU-Net's readers give it); a float32 spacing changes the resampled shape "
     "nnU-Net computes"),
    ("spacing_zero", _image(1, 5, 6, 7), torch.tensor([2.0, 0.0, 1.0], dtype=torch.float64),
     "spacing must be positive and finite, got [2.0, 0.0, 1.0]"),
    ("spacing_inf", _image(1, 5, 6, 7), torch.tensor([2.0, float("inf"), 1.0], dtype=torch.float64),
     "spacing must be positive and finite, got [2.0, inf, 1.0]"),
]


@pytest.mark.parametrize("case", BAD_IMAGES, ids=lambda c: c[0])
@pytest.mark.parametrize("method", ["preprocess", "forward", "predict_with_probabilities"])
def test_bad_image_is_refused_with_its_reason(case, method, pipelines):
    _, image, spacing, message = case
    with pytest.raises(PipelineInputError) as error:
        getattr(pipelines["eager"], method)(image, spacing)
    assert str(error.value) == message
    with pytest.raises(torch.jit.Error) as error:
        getattr(pipelines["scripted"], method)(image, spacing)
    # TorchScript prints floats in lists its own way ([2., 0., 1.]): compare up to the values.
    assert f"nnunet_export.pipeline.errors.PipelineInputError: {message.split(', got [')[0]}" in str(error.value)


def test_image_is_never_written_to(pipelines):
    image = torch.rand(1, 7, 9, 11) * 300
    before = image.clone()
    pipelines["eager"](image, [2.5, 1.1, 0.9])
    pipelines["scripted"](image, torch.tensor([2.5, 1.1, 0.9], dtype=torch.float64))
    assert torch.equal(image, before)


def test_bad_logits_and_properties_for_the_export_are_refused(pipelines):
    data, properties = pipelines["eager"].preprocess(_image(1, 5, 6, 7), GOOD_SPACING)
    logits = pipelines["eager"].predict_logits(data)
    for name, pipeline in pipelines.items():
        kind = PipelineInputError if name == "eager" else torch.jit.Error
        with pytest.raises(kind) as error:
            pipeline.segmentation_from_logits(logits.float(), properties)
        assert "logits must be float16, as predict_logits returns them" in str(error.value)
        with pytest.raises(kind) as error:
            pipeline.segmentation_from_logits(logits[:1], properties)
        assert "logits must be (3, *spatial) as predict_logits returns them, got shape [1, 5, 6, 7]" in str(error.value)
        partial = {k: v for k, v in properties.items() if k != "bbox_used_for_cropping"}
        with pytest.raises(kind) as error:
            pipeline.probabilities_from_logits(logits, partial)
        assert "properties lack 'bbox_used_for_cropping': pass what preprocess returned" in str(error.value)


def test_a_cascade_stage_refuses_the_image_path_but_predicts_logits(nnunet_fixture):
    pipeline = nnunet_export.load_complete(nnunet_fixture("cascade").model_dir, folds=0).pipeline()
    message = ("configuration '3d_cascade_fullres' is a cascade stage: it takes the previous stage's segmentation, "
               "which preprocess/forward do not produce yet; predict_logits takes the preprocessed image channels "
               "plus one channel per foreground label")
    for call in (pipeline.preprocess, pipeline.forward, pipeline.predict_with_probabilities):
        with pytest.raises(PipelineSettingsError) as error:
            call(_image(1, 5, 6, 7), GOOD_SPACING)
        assert str(error.value) == message
    assert pipeline.settings["preprocessing"] == message
    channels = pipeline.num_input_channels
    assert pipeline.predict_logits(torch.randn(channels, 5, 6, 7)).shape[1:] == (5, 6, 7)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["resampling"]["data"].update(function="resample_torch_fornnunet"),
     "{dir}/plans.json: configuration '3d_fullres' resamples its data with 'resample_torch_fornnunet'; the "
     "pipeline reproduces resample_data_or_seg_to_shape only, so preprocess/forward are unavailable "
     "(predict_logits works)"),
    (lambda c: c["resampling"]["probabilities"].update(function=None),
     "{dir}/plans.json: configuration '3d_fullres' resamples its probabilities with None; the pipeline "
     "reproduces resample_data_or_seg_to_shape only, so preprocess/forward are unavailable (predict_logits works)"),
    (lambda c: c.update(normalization_schemes=["MyNormalization"]),
     "{dir}/plans.json: configuration '3d_fullres' normalizes channel 0 with 'MyNormalization', which the "
     "pipeline does not know (it knows CTNormalization, ZScoreNormalization, RescaleTo01Normalization, "
     "RGBTo01Normalization, NoNormalization), so preprocess/forward are unavailable (predict_logits works)"),
], ids=["data_function", "missing_function", "scheme"])
def test_plans_the_pipeline_cannot_reproduce_refuse_the_image_path(model, edit, message):
    import copy
    import dataclasses

    from nnunet_export.pipeline import build_pipeline

    config = copy.deepcopy(model.info.config.to_dict())
    edit(config)
    info = dataclasses.replace(model.info, config=nnunet_export.ModelConfig(**config))
    pipeline = build_pipeline(model.network, info)
    expected = message.format(dir=model.info.model_dir)
    with pytest.raises(PipelineSettingsError) as error:
        pipeline(_image(1, 5, 6, 7), GOOD_SPACING)
    assert str(error.value) == expected
    assert pipeline.predict_logits(torch.randn(1, 5, 6, 7)).dtype == torch.float16


@pytest.mark.parametrize("step", [0, -0.5, 1.5, float("nan"), True, "0.5"])
def test_tile_step_outside_zero_one_is_refused(model, step):
    with pytest.raises(PipelineSettingsError) as error:
        model.pipeline(tile_step_size=step)
    assert str(error.value) == f"tile_step_size must be a number in (0, 1], got {step!r}"


def test_unknown_mode_is_refused(model):
    with pytest.raises(PipelineSettingsError) as error:
        model.pipeline(mode="fastest")
    assert str(error.value) == "mode must be 'exact' or 'fast', got 'fastest'"


@pytest.mark.parametrize("axes", [None, ()])
def test_mirroring_for_a_model_trained_without_it_is_refused(model, axes):
    import dataclasses

    info = dataclasses.replace(model.info, mirroring_axes=axes)
    without = nnunet_export.NnUNetModel(model.network, info)
    with pytest.raises(PipelineSettingsError) as error:
        without.pipeline()
    assert str(error.value) == (
        f"use_mirroring=True, but {info.checkpoint_paths[0]} was trained without mirroring "
        f"(inference_allowed_mirroring_axes is {axes!r}): pass use_mirroring=False")
    assert without.pipeline(use_mirroring=False).mirror_axes == []


def test_the_pipeline_shares_the_fold_networks(model):
    pipeline = model.pipeline()
    assert pipeline.networks[0] is model.network
    ours = {t.data_ptr() for t in pipeline.networks.parameters()}
    assert ours == {t.data_ptr() for t in model.network.parameters()}


def test_pipeline_leaves_process_state_alone(model):
    torch.set_num_threads(1)
    before = (torch.get_num_threads(), torch.is_grad_enabled(), torch.backends.cudnn.benchmark,
              torch.get_default_dtype())
    pipeline = model.pipeline()
    pipeline.predict_logits(torch.randn(1, 4, 5, 6))
    with pytest.raises(PipelineInputError):
        pipeline.predict_logits(torch.zeros(2, 4, 5, 6))
    after = (torch.get_num_threads(), torch.is_grad_enabled(), torch.backends.cudnn.benchmark,
             torch.get_default_dtype())
    assert after == before


def test_a_model_off_the_cpu_is_refused_until_autocast_is_reproduced(model):
    meta = nnunet_export.NnUNetModel(torch.nn.Conv3d(1, 1, 1, device="meta"), model.info)
    with pytest.raises(PipelineSettingsError) as error:
        meta.pipeline()
    assert str(error.value) == (
        "the pipeline runs on the CPU only for now: the model lives on meta, where nnU-Net runs the network "
        "under autocast (fp16), which this pipeline does not reproduce yet; load the model with device='cpu'")


class _Shifted:
    """A loaded pipeline whose cheap-check method is off by a little."""

    def __init__(self, loaded):
        self.loaded = loaded

    def predict_logits_of(self, data, folds, mirroring):
        return self.loaded.predict_logits_of(data, folds, mirroring) + 1e-3

    def __getattr__(self, name):  # preprocess, segmentation_from_logits, state_dict: the file's own
        return getattr(self.loaded, name)


def test_default_verification_runs_fold_zero_without_mirroring_and_catches_a_difference(model, tmp_path, monkeypatch):
    from nnunet_export import VerificationError

    pipeline = model.pipeline()
    report = pipeline.to_torchscript(tmp_path / "ok.pt")
    assert report.verified and report.max_abs_diff == 0.0
    full = pipeline.to_torchscript(tmp_path / "full.pt", verify="full")
    assert full.verified and full.max_abs_diff == 0.0
    real_load = torch.jit.load
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: _Shifted(real_load(*a, **k)))
    with pytest.raises(VerificationError) as error:
        pipeline.to_torchscript(tmp_path / "bad.pt")
    assert "the exported model differs from the eager module by 0.001" in str(error.value)
    assert not (tmp_path / "bad.pt").exists()


def test_predict_logits_of_names_no_fold(model):
    with pytest.raises(PipelineSettingsError) as error:
        model.pipeline().predict_logits_of(torch.randn(1, 4, 5, 6), [3], True)
    assert str(error.value) == "folds [3] name none of the pipeline's 1 folds"
