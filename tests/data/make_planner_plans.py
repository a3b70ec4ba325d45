"""Regenerates planner_*.json: nnU-Net's own planners run on a synthetic dataset fingerprint.

The planners instantiate many candidate networks (about a minute on two cores), too slow for every
test run, so their output is kept here as test input. Expected values are never stored: the parity
tests compute them from nnunetv2's classes reading these files.

Usage: python tests/data/make_planner_plans.py tests/data
"""
import contextlib
import io
import json
import os
import sys
import tempfile

NAME = "Dataset987_Tiny"


def main(out_dir):
    root = tempfile.mkdtemp()
    os.environ["nnUNet_raw"] = root + "/raw"
    os.environ["nnUNet_preprocessed"] = root + "/pre"
    os.environ["nnUNet_results"] = root + "/res"
    os.makedirs(f"{root}/raw/{NAME}")
    os.makedirs(f"{root}/pre/{NAME}")
    # 'dataset' and overwrite_image_reader_writer let the planner run without any image file.
    dataset = {
        "channel_names": {"0": "CT", "1": "T2"},
        "labels": {"background": 0, "a": 1, "b": 2},
        "numTraining": 4,
        "file_ending": ".nii.gz",
        "overwrite_image_reader_writer": "SimpleITKIO",
        "dataset": {
            f"c{i}": {"images": [f"imagesTr/c{i}_0000.nii.gz", f"imagesTr/c{i}_0001.nii.gz"],
                      "label": f"labelsTr/c{i}.nii.gz"}
            for i in range(4)
        },
    }
    with open(f"{root}/raw/{NAME}/dataset.json", "w") as f:
        json.dump(dataset, f)
    # Anisotropic and large enough that the planner also makes 3d_lowres and the cascade.
    props = {"max": 1000.0, "mean": 50.5, "median": 40.0, "min": -1000.0,
             "percentile_00_5": -900.0, "percentile_99_5": 900.0, "std": 100.25}
    fingerprint = {
        "spacings": [[3.0, 0.8, 0.8]] * 4,
        "shapes_after_crop": [[120, 400, 400]] * 4,
        "foreground_intensity_properties_per_channel": {str(c): props for c in range(2)},
        "median_relative_size_after_cropping": 1.0,
    }
    with open(f"{root}/pre/{NAME}/dataset_fingerprint.json", "w") as f:
        json.dump(fingerprint, f)

    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
        nnUNetPlannerResEncM,
    )

    os.makedirs(out_dir, exist_ok=True)
    for planner, file_name in ((ExperimentPlanner, "planner_nnUNetPlans.json"),
                               (nnUNetPlannerResEncM, "planner_nnUNetResEncUNetMPlans.json")):
        with contextlib.redirect_stdout(io.StringIO()):
            plans = planner(NAME).plan_experiment()
        with open(os.path.join(out_dir, file_name), "w") as f:
            json.dump(plans, f, indent=4)


if __name__ == "__main__":
    main(sys.argv[1])
