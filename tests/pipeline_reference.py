"""nnU-Net's own preprocessing, prediction and export, called the way nnU-Net calls them: the
reference the pipeline's preprocessing and export-to-original-geometry tests compare with.

Nothing here re-implements nnU-Net; each function only builds nnU-Net's managers from a model
folder's plans.json / dataset.json and calls:

    nnunet_preprocess      the configuration's preprocessor class (DefaultPreprocessor).run_case_npy
    nnunet_predict         nnUNetPredictor.initialize_from_trained_model_folder + predict_single_npy_array
    nnunet_export_logits   convert_predicted_logits_to_segmentation_with_correct_shape

nnU-Net reads checkpoints with torch.load(weights_only=False); here its initialise reads them
through nnunet_export's safe reader instead (nnunet_export.testing's pattern), everything else
of nnU-Net runs as is. nnU-Net changes torch's process-wide thread count while predicting and
exporting: every function restores it.

Example:
    >>> data, seg, properties = nnunet_preprocess(get_fixture("masked").model_dir, "3d_fullres",
    ...                                           image, spacing)
    >>> segmentation = nnunet_predict(get_fixture("masked").model_dir, (0,), image, spacing)
"""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from nnunet_export.testing.predictions import _checkpoints_read_safely


@contextlib.contextmanager
def _torch_threads_kept() -> Iterator[None]:
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def nnunet_managers(model_dir: Path, configuration: str):
    """(PlansManager, ConfigurationManager, dataset.json dict) of a model folder."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(load_json(str(Path(model_dir) / "plans.json")))
    dataset_json = load_json(str(Path(model_dir) / "dataset.json"))
    return plans_manager, plans_manager.get_configuration(configuration), dataset_json


def nnunet_preprocess(model_dir: Path, configuration: str, image: np.ndarray,
                      spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray, dict]:
    """nnU-Net's preprocessing of one raw image (float32 (c, z, y, x), spacing [z, y, x]).

    Returns (data float32 (c, *preprocessed), seg (1, *preprocessed): the crop's nonzero map,
    0 inside / -1 outside, resampled like a segmentation; properties: spacing,
    shape_before_cropping, bbox_used_for_cropping, shape_after_cropping_and_before_resampling).
    The caller's image is not modified.
    """
    plans_manager, configuration_manager, dataset_json = nnunet_managers(model_dir, configuration)
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    properties = {"spacing": [float(s) for s in spacing]}
    with _torch_threads_kept():
        data, seg, properties = preprocessor.run_case_npy(np.array(image, dtype=np.float32, copy=True), None,
                                                          properties, plans_manager, configuration_manager,
                                                          dataset_json)
    return data, seg, properties


def nnunet_predictor(model_dir: Path, folds: Sequence[int | str], *, use_mirroring: bool = True,
                     tile_step_size: float = 0.5, checkpoint_name: str = "checkpoint_final.pth"):
    """nnUNetPredictor on the CPU, initialised from `model_dir` (checkpoints read safely)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    with _torch_threads_kept(), _checkpoints_read_safely():
        predictor.initialize_from_trained_model_folder(str(model_dir), list(folds), checkpoint_name)
    return predictor


def nnunet_predict(model_dir: Path, folds: Sequence[int | str], image: np.ndarray, spacing: Sequence[float], *,
                   use_mirroring: bool = True, tile_step_size: float = 0.5, return_probabilities: bool = False,
                   checkpoint_name: str = "checkpoint_final.pth", predictor=None):
    """nnU-Net's whole prediction of one raw image, back in the image's geometry.

    Returns the segmentation (z, y, x) (uint8), or (segmentation, probabilities float32
    (classes, z, y, x)) with return_probabilities. Pass `predictor` (nnunet_predictor(...)) to
    reuse an initialised one; the other settings are then the predictor's.
    """
    if predictor is None:
        predictor = nnunet_predictor(model_dir, folds, use_mirroring=use_mirroring, tile_step_size=tile_step_size,
                                     checkpoint_name=checkpoint_name)
    properties = {"spacing": [float(s) for s in spacing]}
    with _torch_threads_kept(), torch.no_grad():
        return predictor.predict_single_npy_array(np.array(image, dtype=np.float32, copy=True), properties, None,
                                                  None, return_probabilities)


def nnunet_export_logits(model_dir: Path, configuration: str, logits: torch.Tensor, properties: dict,
                         return_probabilities: bool = False):
    """nnU-Net's export of predicted logits (classes, *preprocessed) to the original geometry:
    resampling to the cropped shape, argmax / region rule, un-cropping, transpose back.

    `properties` are nnunet_preprocess's (deep-copied: nnU-Net's export modifies nothing that the
    caller sees). Returns what convert_predicted_logits_to_segmentation_with_correct_shape does:
    the segmentation, or (segmentation, probabilities) with return_probabilities.
    """
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    plans_manager, configuration_manager, dataset_json = nnunet_managers(model_dir, configuration)
    label_manager = plans_manager.get_label_manager(dataset_json)
    with _torch_threads_kept():
        return convert_predicted_logits_to_segmentation_with_correct_shape(
            logits.clone(), plans_manager, configuration_manager, label_manager, copy.deepcopy(properties),
            return_probabilities=return_probabilities)
