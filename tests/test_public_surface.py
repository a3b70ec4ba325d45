"""The public surface of nnunet_export, written out literally: a change to it is a visible decision.

Pinned: `nnunet_export.__all__`, the `inspect.signature` string of every public callable in it,
the base classes of every public exception, and the public methods (with signatures) of
NnUNetModel, ModelConfig, ExportReport and PredictionSummary. When one of these tests fails after an intended
change, update the literal here in the same commit and say so in its message.
"""
from __future__ import annotations

import inspect

import pytest

import nnunet_export

ALL = [
    "CheckpointError", "ExportError", "ExportReport", "FoldMismatchError", "ImageFileError", "MetadataError",
    "ModelConfig", "ModelFolderError", "ModelInfo", "NnUNetModel", "OutputPathError", "Pipeline",
    "PipelineInputError", "PipelineSettingsError", "PlansError", "PredictError", "PredictionSummary",
    "UnsafeCheckpointError",
    "UnsupportedArchitectureError", "UnsupportedNnUNetError", "VerificationError", "WeightsMismatchError",
    "__version__", "complete", "load_complete", "patch_nnunet", "patched_nnunet", "predict", "read_checkpoint",
    "read_metadata", "read_model_config", "to_exported_program", "to_onnx", "to_torchscript", "unpatch_nnunet",
    "write_triton_repository",
]

SIGNATURES = {
    "ExportReport": (
        "(path: 'str', file_format: 'str', method: 'str', verified: 'bool', max_abs_diff: 'float | None', "
        "input_shapes: 'list' = <factory>, parameters: 'int' = 0, weight_bytes: 'int' = 0, file_bytes: 'int' = 0, "
        "seconds: 'float' = 0.0, weights_sha256: 'dict' = <factory>) -> None"),
    "ModelConfig": (
        "(dataset_name: 'str', plans_name: 'str', configuration: 'str', architecture: 'Dict[str, Any]', "
        "converted_from_old_plans: 'bool', patch_size: 'List[int]', spacing: 'List[float]', num_dimensions: 'int', "
        "batch_size: 'Optional[int]', transpose_forward: 'List[int]', transpose_backward: 'List[int]', "
        "normalization_schemes: 'List[str]', use_mask_for_norm: 'List[bool]', "
        "foreground_intensity_properties_per_channel: 'Dict[str, Dict[str, float]]', "
        "channel_names: 'Dict[str, str]', file_ending: 'str', labels: 'Dict[str, Union[int, List[int]]]', "
        "has_regions: 'bool', regions: 'Optional[List[Union[int, List[int]]]]', "
        "regions_class_order: 'Optional[List[int]]', ignore_label: 'Optional[int]', all_labels: 'List[int]', "
        "foreground_labels: 'List[int]', num_input_channels: 'int', num_output_channels: 'int', "
        "previous_stage: 'Optional[str]', next_stage: 'Optional[List[str]]', "
        "resampling: 'Dict[str, Dict[str, Any]]', image_reader_writer: 'Optional[str]') -> None"),
    "ModelInfo": (
        "(model_dir: 'str', config: 'ModelConfig', folds: 'tuple', checkpoint_name: 'str', checkpoint_paths: 'tuple', "
        "trainer_name: 'str', mirroring_axes: 'Optional[tuple]', weights_sha256: 'Sequence[str]', scriptable: 'bool', "
        "not_scriptable_reason: 'Optional[str]', builder: 'str', weights_mapped: 'bool' = False) -> None"),
    "NnUNetModel": "(network: 'torch.nn.Module', info: 'ModelInfo')",
    "complete": "(predictor) -> 'torch.nn.Module'",
    "predict": (
        "(model: 'Any', inputs: 'Any', output_dir: 'Union[str, os.PathLike]', *, folds=None, "
        "checkpoint_name: 'str' = 'checkpoint_final.pth', configuration: 'Optional[str]' = None, "
        "tile_step_size: 'Optional[float]' = None, use_mirroring: 'Optional[bool]' = None, "
        "save_probabilities: 'bool' = False, continue_prediction: 'bool' = False, device: 'str' = 'cpu', "
        "case_ids: 'Optional[Sequence[str]]' = None, progress: 'Any' = None) -> 'PredictionSummary'"),
    "PredictionSummary": "(output_dir: 'Path', device: 'str', model: 'str', cases: 'list', seconds: 'float' = 0.0) -> None",
    "load_complete": (
        "(model_dir: 'Union[str, os.PathLike]', folds: 'FoldsArg' = None, "
        "checkpoint_name: 'str' = 'checkpoint_final.pth', device: 'Union[str, torch.device]' = 'cpu', *, "
        "configuration: 'str | None' = None, num_threads: 'int | None' = None, "
        "progress: 'Callable[[str], Any] | None' = None, copy: 'bool' = True, verify_crc: 'bool' = True) "
        "-> 'NnUNetModel'"),
    "Pipeline": (
        "(networks: List[torch.nn.modules.module.Module], gaussian: torch.Tensor, patch_size: List[int], "
        "mirror_axes: List[List[int]], tile_step_size: float, use_gaussian: bool, exact: bool, "
        "num_input_channels: int, num_heads: int, slice_by_slice: bool, cascade: bool, "
        "info: nnunet_export.model_info.ModelInfo, settings: dict, "
        "preprocessing: nnunet_export.pipeline.preprocessing.Preprocessing, "
        "export: nnunet_export.pipeline.export_prediction.PredictionExport, image_path_error: str)"),
    "patch_nnunet": "(pipeline: 'bool' = False) -> 'None'",
    "patched_nnunet": "(pipeline: 'bool' = False) -> 'Iterator[None]'",
    "read_checkpoint": (
        "(path: 'str | os.PathLike[str]', keys: 'Iterable[str] | None' = None, *, verify_crc: 'bool' = True, "
        "copy: 'bool' = False, threads: 'int | None' = None) -> 'dict[str, Any]'"),
    "read_metadata": "(path: 'Union[str, os.PathLike]') -> 'dict'",
    "read_model_config": (
        "(model_dir: 'Union[str, os.PathLike]', configuration: 'Optional[str]' = None) -> 'ModelConfig'"),
    "to_exported_program": (
        "(module_or_model_dir, path: 'Union[str, os.PathLike]', *, verify: 'Union[bool, str]' = True, "
        "tolerance: 'float' = 1e-06, progress: 'Callable[[str], Any] | None' = None, **load_kwargs) "
        "-> 'ExportReport'"),
    "to_torchscript": (
        "(module_or_model_dir, path: 'Union[str, os.PathLike]', *, method: 'str' = 'auto', verify: 'Union[bool, str]' = True, "
        "tolerance: 'float' = 1e-06, progress: 'Callable[[str], Any] | None' = None, **load_kwargs) "
        "-> 'ExportReport'"),
    "to_onnx": (
        "(model_or_model_dir, path: 'Union[str, os.PathLike]', *, opset: 'int' = 18, verify: 'Union[bool, str]' = True, "
        "tolerance: 'float' = 0.0001, progress: 'Callable[[str], Any] | None' = None, **load_kwargs) "
        "-> 'ExportReport'"),
    "unpatch_nnunet": "() -> 'None'",
    "write_triton_repository": (
        "(model_or_model_dir, repository: 'Union[str, os.PathLike]', *, name: 'str' = 'nnunet', "
        "max_batch_size: 'int' = 0, onnx: 'bool' = False, progress: 'Callable[[str], Any] | None' = None, "
        "**load_kwargs) -> 'Path'"),
}

# Exceptions have no inspectable signature; their place in the hierarchy is what callers catch.
EXCEPTION_BASES = {
    "CheckpointError": ("ExportError",),
    "ExportError": ("Exception",),
    "FoldMismatchError": ("ExportError",),
    "ImageFileError": ("ExportError",),
    "MetadataError": ("ExportError",),
    "ModelFolderError": ("ExportError",),
    "OutputPathError": ("ExportError",),
    "PipelineInputError": ("ExportError",),
    "PipelineSettingsError": ("ExportError",),
    "PlansError": ("ExportError",),
    "PredictError": ("ExportError",),
    "UnsafeCheckpointError": ("CheckpointError",),
    "UnsupportedArchitectureError": ("ExportError",),
    "UnsupportedNnUNetError": ("ExportError",),
    "VerificationError": ("ExportError",),
    "WeightsMismatchError": ("ExportError",),
}

# Public methods defined by the class itself (inherited torch.nn.Module methods are torch's surface).
METHODS = {
    "NnUNetModel": {
        "forward": "(self, x: 'torch.Tensor') -> 'torch.Tensor'",
        "to_torchscript": (
            "(self, path: 'Union[str, os.PathLike]', *, method: 'str' = 'auto', verify: 'Union[bool, str]' = True, "
            "tolerance: 'float' = 1e-06, progress: 'Callable[[str], Any] | None' = None) -> 'ExportReport'"),
        "to_exported_program": (
            "(self, path: 'Union[str, os.PathLike]', *, verify: 'Union[bool, str]' = True, tolerance: 'float' = 1e-06, "
            "progress: 'Callable[[str], Any] | None' = None) -> 'ExportReport'"),
        "pipeline": (
            "(self, tile_step_size: 'float' = 0.5, use_gaussian: 'bool' = True, use_mirroring: 'bool' = True, "
            "mode: 'str' = 'exact') -> 'Pipeline'"),
    },
    "Pipeline": {
        "example_inputs": "(self) -> Tuple[torch.Tensor, torch.Tensor]",
        "forward": "(self, image: torch.Tensor, spacing: torch.Tensor) -> torch.Tensor",
        "predict_logits": "(self, data: torch.Tensor) -> torch.Tensor",
        "predict_with_probabilities": (
            "(self, image: torch.Tensor, spacing: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]"),
        "preprocess": (
            "(self, image: torch.Tensor, spacing: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]"),
        "probabilities_from_logits": (
            "(self, logits: torch.Tensor, properties: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]"),
        "segmentation_from_logits": (
            "(self, logits: torch.Tensor, properties: Dict[str, torch.Tensor]) -> torch.Tensor"),
        "predict_logits_of": "(self, data: torch.Tensor, folds: List[int], mirroring: bool) -> torch.Tensor",
        "to_torchscript": (
            "(self, path: Union[str, os.PathLike], *, verify: Union[bool, str] = True, tolerance: float = 0.0, "
            "progress: Optional[Callable[[str], Any]] = None) -> nnunet_export.export_writer.ExportReport"),
    },
    "ModelConfig": {"to_dict": "(self) -> 'Dict[str, Any]'"},
    "ExportReport": {"table": "(self) -> 'str'"},
    "PredictionSummary": {"table": "(self) -> 'str'"},
}


def test_all_is_pinned():
    assert list(nnunet_export.__all__) == ALL


def test_every_name_in_all_is_pinned_once():
    # Each public name is either a pinned callable, a pinned exception, or __version__.
    pinned = sorted([*SIGNATURES, *EXCEPTION_BASES, "__version__"])
    assert pinned == sorted(ALL)
    assert isinstance(nnunet_export.__version__, str)


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_signature(name):
    assert str(inspect.signature(getattr(nnunet_export, name))) == SIGNATURES[name]


@pytest.mark.parametrize("name", sorted(EXCEPTION_BASES))
def test_exception_bases(name):
    error = getattr(nnunet_export, name)
    assert tuple(base.__name__ for base in error.__bases__) == EXCEPTION_BASES[name]


@pytest.mark.parametrize("class_name", sorted(METHODS))
def test_public_methods(class_name):
    cls = getattr(nnunet_export, class_name)
    methods = {name: str(inspect.signature(getattr(cls, name)))
               for name, value in vars(cls).items()
               if not name.startswith("_") and inspect.isfunction(inspect.unwrap(getattr(cls, name)))}
    assert methods == METHODS[class_name]
