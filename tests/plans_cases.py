"""Plans/dataset inputs for the plans-reader tests, and nnU-Net's own reading of them.

Inputs start from plans that nnU-Net's planners wrote (tests/data/planner_*.json, see
make_planner_plans.py) and are varied the way real model folders vary. Expected values are never
stored: `nnunet_reference` computes them with nnunetv2's PlansManager, ConfigurationManager,
LabelManager and determine_num_input_channels.
"""
import copy
import inspect
import json
import os
import warnings

import numpy as np

DATA = os.path.join(os.path.dirname(__file__), "data")

DATASET = {
    "channel_names": {"0": "CT", "1": "T2"},
    "labels": {"background": 0, "a": 1, "b": 2},
    "numTraining": 4,
    "file_ending": ".nii.gz",
}
REGIONS = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3}
OLD_KEYS = ("UNet_class_name", "UNet_base_num_features", "n_conv_per_stage_encoder",
            "n_conv_per_stage_decoder", "num_pool_per_axis", "pool_op_kernel_sizes",
            "conv_kernel_sizes", "unet_max_num_features")


def planner_plans(kind="nnUNetPlans"):
    """Plans nnU-Net's planner wrote: kind is nnUNetPlans or nnUNetResEncUNetMPlans."""
    with open(os.path.join(DATA, f"planner_{kind}.json")) as f:
        return json.load(f)


def to_old_format(configuration):
    """Rewrites a modern configuration in the pre-2.3 format (the inverse of nnU-Net's conversion)."""
    cfg = copy.deepcopy(configuration)
    arch = cfg.pop("architecture")
    kw = arch["arch_kwargs"]
    resenc = "n_blocks_per_stage" in kw
    cfg.update({
        "UNet_class_name": "ResidualEncoderUNet" if resenc else "PlainConvUNet",
        "UNet_base_num_features": kw["features_per_stage"][0],
        "unet_max_num_features": max(kw["features_per_stage"]),
        "n_conv_per_stage_encoder": kw["n_blocks_per_stage" if resenc else "n_conv_per_stage"],
        "n_conv_per_stage_decoder": kw["n_conv_per_stage_decoder"],
        "num_pool_per_axis": [sum(1 for s in kw["strides"] if s[a] > 1) for a in range(len(kw["strides"][0]))],
        "pool_op_kernel_sizes": kw["strides"],
        "conv_kernel_sizes": kw["kernel_sizes"],
    })
    return cfg


def variants():
    """(id, plans, dataset) triples covering the formats and label setups nnU-Net supports."""
    out = []
    plain, resenc = planner_plans(), planner_plans("nnUNetResEncUNetMPlans")
    out.append(("planner_plain", plain, DATASET))
    out.append(("planner_resenc", resenc, DATASET))

    for name, source in (("old_plain", plain), ("old_resenc", resenc)):
        plans = copy.deepcopy(source)
        for c in ("2d", "3d_lowres", "3d_fullres"):
            plans["configurations"][c] = to_old_format(plans["configurations"][c])
        out.append((name, plans, DATASET))

    # Old parent, modern child and the reverse; a three-level chain; a child replacing a block.
    plans = copy.deepcopy(plain)
    cfgs = plans["configurations"]
    cfgs["3d_fullres"] = to_old_format(cfgs["3d_fullres"])
    cfgs["3d_fullres_bs4"] = {"inherits_from": "3d_cascade_fullres", "batch_size": 4}
    cfgs["3d_fullres_small"] = {"inherits_from": "3d_fullres_bs4", "patch_size": [40, 128, 128]}
    cfgs["2d_wide"] = {"inherits_from": "2d", "architecture": copy.deepcopy(resenc["configurations"]["2d"]["architecture"])}
    out.append(("inheritance", plans, DATASET))

    regions = dict(DATASET, labels=REGIONS, regions_class_order=[1, 2, 3])
    out.append(("regions", plain, regions))
    out.append(("regions_resenc", resenc, regions))

    ignore = dict(DATASET, labels={"background": 0, "a": 1, "b": 2, "ignore": 3})
    out.append(("ignore_label", plain, ignore))
    ignore_regions = dict(regions, labels=dict(REGIONS, ignore=4))
    out.append(("ignore_label_regions", plain, ignore_regions))

    legacy = {k: v for k, v in DATASET.items() if k != "channel_names"}
    legacy["modality"] = {"0": "CT", "1": "MRI"}
    plans = copy.deepcopy(plain)
    plans["foreground_intensity_properties_by_modality"] = plans.pop("foreground_intensity_properties_per_channel")
    out.append(("legacy_keys", plans, legacy))

    single_lists = dict(DATASET, labels={"background": 0, "a": [1], "b": [2]})
    out.append(("single_label_lists", plain, single_lists))

    plans = copy.deepcopy(plain)
    plans["configurations"]["3d_lowres"]["next_stage"] = ["3d_cascade_fullres", "3d_fullres"]
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["dropout_op"] = "torch.nn.Dropout3d"
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["dropout_op_kwargs"] = {"p": 0.0}
    out.append(("next_stage_list_dropout", plans, DATASET))
    return out


def write_model(folder, plans, dataset):
    """Writes plans.json and dataset.json into folder (created) and returns it as a str."""
    os.makedirs(folder, exist_ok=True)
    for name, content in (("plans.json", plans), ("dataset.json", dataset)):
        with open(os.path.join(folder, name), "w") as f:
            json.dump(content, f, indent=4)
    return str(folder)


def plain(value):
    """nnU-Net's values as JSON types: tuples become lists, NumPy scalars Python numbers."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def nnunet_reference(model_dir, configuration):
    """Every ModelConfig field as nnunetv2 2.8's own classes compute it from the files."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    with open(os.path.join(model_dir, "plans.json")) as f:
        plans = json.load(f)
    with open(os.path.join(model_dir, "dataset.json")) as f:
        dataset = json.load(f)
    pm = PlansManager(plans)
    raw = pm._internal_resolve_configuration_inheritance(configuration)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nnU-Net warns when it converts old plans
        cm = pm.get_configuration(configuration)
    lm = pm.get_label_manager(dataset)
    return plain({
        "dataset_name": pm.dataset_name,
        "plans_name": pm.plans_name,
        "configuration": configuration,
        "architecture": {
            "network_class_name": cm.network_arch_class_name,
            "arch_kwargs": cm.network_arch_init_kwargs,
            "_kw_requires_import": cm.network_arch_init_kwargs_req_import,
        },
        "converted_from_old_plans": "architecture" not in raw,
        "patch_size": cm.patch_size,
        "spacing": cm.spacing,
        "num_dimensions": len(cm.patch_size),
        "batch_size": cm.configuration.get("batch_size"),
        "transpose_forward": pm.transpose_forward,
        "transpose_backward": pm.transpose_backward,
        "normalization_schemes": cm.normalization_schemes,
        "use_mask_for_norm": cm.use_mask_for_norm,
        "foreground_intensity_properties_per_channel": pm.foreground_intensity_properties_per_channel,
        "channel_names": dataset["channel_names"] if "channel_names" in dataset else dataset["modality"],
        "file_ending": dataset["file_ending"],
        "labels": dataset["labels"],
        "has_regions": lm.has_regions,
        "regions": lm.foreground_regions if lm.has_regions else None,
        "regions_class_order": lm.regions_class_order,
        "ignore_label": lm.ignore_label,
        "all_labels": lm.all_labels,
        "foreground_labels": lm.foreground_labels,
        "num_input_channels": determine_num_input_channels(pm, cm, dataset),
        "num_output_channels": lm.num_segmentation_heads,
        "previous_stage": cm.previous_stage_name,
        "next_stage": cm.next_stage_names,
        "resampling": {target: _resampling(cm, target) for target in ("data", "seg", "probabilities")},
        "image_reader_writer": pm.plans.get("image_reader_writer"),
    })


def _resampling(cm, target: str) -> dict:
    """The function nnU-Net binds for `target` and every argument it gets, defaults included."""
    bound = getattr(cm, f"resampling_fn_{target}")
    arguments = inspect.signature(bound.func).bind_partial(**bound.keywords)
    arguments.apply_defaults()
    return {"function": bound.func.__name__, "order": arguments.arguments["order"],
            "order_z": arguments.arguments["order_z"],
            "force_separate_z": arguments.arguments["force_separate_z"],
            "separate_z_anisotropy_threshold": float(arguments.arguments["separate_z_anisotropy_threshold"])}
