"""Bad plans.json / dataset.json: a PlansError naming the file and the key path, never a crash."""
import copy
import json
import os

import pytest

import nnunet_export
from nnunet_export import PlansError
from plans_cases import DATASET, REGIONS, planner_plans, to_old_format, write_model

PLAIN = planner_plans()
RESENC = planner_plans("nnUNetResEncUNetMPlans")
KW = "configurations.3d_fullres.architecture.arch_kwargs"


def make(tmp_path, plans_edit=None, dataset_edit=None, plans=PLAIN):
    plans, dataset = copy.deepcopy(plans), copy.deepcopy(DATASET)
    if plans_edit:
        plans_edit(plans)
    if dataset_edit:
        dataset_edit(dataset)
    return write_model(tmp_path / "model", plans, dataset)


def error_of(model_dir, configuration="3d_fullres"):
    with pytest.raises(PlansError) as info:
        nnunet_export.read_model_config(model_dir, configuration)
    return str(info.value)


def plans_error(model_dir, key_path, detail, configuration="3d_fullres"):
    assert error_of(model_dir, configuration) == f"{os.path.join(model_dir, 'plans.json')}: {key_path}: {detail}"


def dataset_error(model_dir, key_path, detail, configuration="3d_fullres"):
    assert error_of(model_dir, configuration) == f"{os.path.join(model_dir, 'dataset.json')}: {key_path}: {detail}"


def kwargs(plans, configuration="3d_fullres"):
    return plans["configurations"][configuration]["architecture"]["arch_kwargs"]


# ---- files and JSON syntax ----

def test_malformed_json_gives_line_and_column(tmp_path):
    model_dir = make(tmp_path)
    with open(os.path.join(model_dir, "plans.json"), "w") as f:
        f.write('{\n    "dataset_name": "x",\n    "plans_name": [1, 2,,]\n}\n')
    assert error_of(model_dir) == f"{model_dir}/plans.json:3:25: malformed JSON: parsing stopped at this position"


def test_trailing_data_gives_line_and_column(tmp_path):
    model_dir = make(tmp_path)
    with open(os.path.join(model_dir, "dataset.json"), "w") as f:
        f.write('{"labels": {}}\n  x')
    assert error_of(model_dir) == (f"{model_dir}/dataset.json:2:3: malformed JSON: "
                                   "unexpected data after the top-level value")


def test_embedded_nul_is_trailing_data(tmp_path):
    model_dir = make(tmp_path)
    with open(os.path.join(model_dir, "dataset.json"), "wb") as f:
        f.write(b'{"labels": {}}\x00{}')
    assert error_of(model_dir) == (f"{model_dir}/dataset.json:1:15: malformed JSON: "
                                   "unexpected data after the top-level value")


def test_empty_file(tmp_path):
    model_dir = make(tmp_path)
    open(os.path.join(model_dir, "plans.json"), "w").close()
    assert error_of(model_dir) == f"{model_dir}/plans.json:1:1: malformed JSON: parsing stopped at this position"


def test_missing_dataset_json(tmp_path):
    model_dir = make(tmp_path)
    os.remove(os.path.join(model_dir, "dataset.json"))
    assert error_of(model_dir) == f"{model_dir}/dataset.json: cannot open: No such file or directory"


def test_missing_plans_json(tmp_path):
    # The one model-folder resolver (folds.resolve_model_dir) decides, as for load_complete.
    with pytest.raises(nnunet_export.ModelFolderError) as info:
        nnunet_export.read_model_config(str(tmp_path), "3d_fullres")
    assert str(info.value) == (
        f"{str(tmp_path)!r} is not an nnU-Net model folder: it has no plans.json (expected "
        "<Trainer>__<Plans>__<configuration>/ with plans.json, dataset.json and fold_X/)")


def test_directory_instead_of_file(tmp_path):
    model_dir = make(tmp_path)
    os.remove(os.path.join(model_dir, "dataset.json"))
    os.mkdir(os.path.join(model_dir, "dataset.json"))
    assert error_of(model_dir) == f"{model_dir}/dataset.json: not a regular file"


def test_file_over_the_size_limit(tmp_path):
    model_dir = make(tmp_path)
    with open(os.path.join(model_dir, "dataset.json"), "r+b") as f:
        f.truncate(65 * 1024 * 1024)  # sparse: refused from fstat alone, before any read
    assert error_of(model_dir) == (f"{model_dir}/dataset.json: file is 68157440 bytes, more than the "
                                   "67108864 bytes allowed for a JSON file")


def test_top_level_not_an_object(tmp_path):
    model_dir = make(tmp_path)
    with open(os.path.join(model_dir, "plans.json"), "w") as f:
        f.write("[1, 2]")
    assert error_of(model_dir) == f"{model_dir}/plans.json: expected an object at the top level, found a list"


def test_duplicate_key(tmp_path):
    model_dir = make(tmp_path)
    with open(os.path.join(model_dir, "dataset.json"), "w") as f:
        f.write('{"labels": {"background": 0, "a": 1, "a": 2}}')
    dataset_error(model_dir, "labels", 'duplicate key "a" (JSON allows it, but which value counts is ambiguous)')


# ---- missing keys and wrong types ----

def test_missing_key_names_full_path(tmp_path):
    model_dir = make(tmp_path, lambda p: kwargs(p).pop("strides"))
    plans_error(model_dir, f"{KW}.strides", "missing required key")


def test_missing_key_in_parent_names_the_parent(tmp_path):
    # 3d_cascade_fullres takes its architecture from 3d_fullres: that is where the fix belongs.
    model_dir = make(tmp_path, lambda p: kwargs(p).pop("kernel_sizes"))
    plans_error(model_dir, f"{KW}.kernel_sizes", "missing required key", "3d_cascade_fullres")


def test_missing_key_nowhere_in_chain_names_requested_configuration(tmp_path):
    model_dir = make(tmp_path, lambda p: p["configurations"]["3d_fullres"].pop("patch_size"))
    plans_error(model_dir, "configurations.3d_cascade_fullres.patch_size", "missing required key",
                "3d_cascade_fullres")


def test_missing_top_level_key(tmp_path):
    model_dir = make(tmp_path, lambda p: p.pop("transpose_forward"))
    plans_error(model_dir, "transpose_forward", "missing required key")


def test_missing_architecture_and_old_keys(tmp_path):
    model_dir = make(tmp_path, lambda p: p["configurations"]["3d_fullres"].pop("architecture"))
    plans_error(model_dir, "configurations.3d_fullres.architecture", "missing required key")


@pytest.mark.parametrize("edit, key_path, detail", [
    (lambda p: p["configurations"]["3d_fullres"].update(patch_size="56x192x192"),
     "configurations.3d_fullres.patch_size", "expected a list, found a string"),
    (lambda p: kwargs(p).update(conv_op=3), f"{KW}.conv_op", "expected a string, found a number"),
    (lambda p: kwargs(p).update(norm_op_kwargs=[1]), f"{KW}.norm_op_kwargs", "expected an object or null, found a list"),
    (lambda p: kwargs(p).update(conv_bias="yes"), f"{KW}.conv_bias", "expected a boolean or null, found \"yes\""),
    (lambda p: p["configurations"]["3d_fullres"].update(use_mask_for_norm=[0, 1]),
     "configurations.3d_fullres.use_mask_for_norm[0]", "expected a boolean, found a number"),
    (lambda p: p["configurations"]["3d_fullres"]["architecture"].update(network_class_name=None),
     "configurations.3d_fullres.architecture.network_class_name", "expected a string, found null"),
    (lambda p: p.update(dataset_name=4), "dataset_name", "expected a string, found a number"),
    (lambda p: p.update(configurations=[]), "configurations", "expected an object, found a list"),
    (lambda p: p["configurations"]["3d_fullres"]["architecture"].update(_kw_requires_import=["conv_op", "pool_op"]),
     "configurations.3d_fullres.architecture._kw_requires_import[1]", 'names "pool_op", which is not a key of arch_kwargs'),
    (lambda p: p.update(label_manager="MyLabelManager"), "label_manager",
     'unsupported label manager "MyLabelManager": only nnU-Net\'s LabelManager is known'),
])
def test_wrong_types(tmp_path, edit, key_path, detail):
    plans_error(make(tmp_path, edit), key_path, detail)


# ---- list lengths ----

@pytest.mark.parametrize("key, cut, why", [
    ("strides", 1, "n_stages"), ("kernel_sizes", 1, "n_stages"), ("features_per_stage", 1, "n_stages"),
    ("n_conv_per_stage", 1, "n_stages"), ("n_conv_per_stage_decoder", 1, "n_stages - 1"),
])
def test_per_stage_lists_must_match_n_stages(tmp_path, key, cut, why):
    model_dir = make(tmp_path, lambda p: kwargs(p).update({key: kwargs(p)[key][:-cut]}))
    n = PLAIN["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["n_stages"]
    want = n - 1 if why == "n_stages - 1" else n
    plans_error(model_dir, f"{KW}.{key}", f"expected {want} entries ({why}), found {want - cut}")


def test_resenc_blocks_must_match_n_stages(tmp_path):
    model_dir = make(tmp_path, lambda p: kwargs(p).update(n_blocks_per_stage=[1, 3]), plans=RESENC)
    n = RESENC["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["n_stages"]
    plans_error(model_dir, f"{KW}.n_blocks_per_stage", f"expected {n} entries (n_stages), found 2")


def test_kernel_entry_must_have_one_size_per_axis(tmp_path):
    model_dir = make(tmp_path, lambda p: kwargs(p)["kernel_sizes"].__setitem__(2, [3, 3]))
    plans_error(model_dir, f"{KW}.kernel_sizes[2]", "expected 3 entries (one per patch_size axis), found 2")


def test_spacing_must_match_patch_size(tmp_path):
    model_dir = make(tmp_path, lambda p: p["configurations"]["3d_fullres"].update(spacing=[1.0, 1.0]))
    plans_error(model_dir, "configurations.3d_fullres.spacing", "expected 3 entries (one per patch_size axis), found 2")


def test_patch_size_must_be_2d_or_3d(tmp_path):
    model_dir = make(tmp_path, lambda p: p["configurations"]["3d_fullres"].update(patch_size=[64]))
    plans_error(model_dir, "configurations.3d_fullres.patch_size", "expected 2 or 3 entries (a 2d or 3d patch), found 1")


# ---- numbers ----

@pytest.mark.parametrize("edit, key_path, detail", [
    (lambda p: p["configurations"]["3d_fullres"].update(patch_size=[56, 192.5, 192]),
     "configurations.3d_fullres.patch_size[1]", "expected an integer, found 192.5"),
    (lambda p: p["configurations"]["3d_fullres"].update(patch_size=[56, 192.0, 192]),
     "configurations.3d_fullres.patch_size[1]", "expected an integer, found 192.0"),
    (lambda p: p["configurations"]["3d_fullres"].update(patch_size=[56, -192, 192]),
     "configurations.3d_fullres.patch_size[1]", "expected an integer from 1 to 2147483647, found -192"),
    (lambda p: kwargs(p).update(n_stages=1e300), f"{KW}.n_stages", "expected an integer, found 1.0000000000000001e+300"),
    (lambda p: kwargs(p).update(n_stages=0), f"{KW}.n_stages", "expected an integer from 2 to 1000, found 0"),
    (lambda p: kwargs(p)["strides"].__setitem__(1, [1, 0, 2]), f"{KW}.strides[1][1]",
     "expected an integer from 1 to 2147483647, found 0"),
    (lambda p: kwargs(p)["features_per_stage"].__setitem__(0, 2 ** 40), f"{KW}.features_per_stage[0]",
     "expected an integer from 1 to 2147483647, found 1099511627776"),
    (lambda p: p["configurations"]["3d_fullres"].update(spacing=[3.0, 0, 0.8]),
     "configurations.3d_fullres.spacing[1]", "expected a positive finite number"),
])
def test_bad_numbers(tmp_path, edit, key_path, detail):
    plans_error(make(tmp_path, edit), key_path, detail)


# ---- configurations and inheritance ----

def test_unknown_configuration_lists_available(tmp_path):
    plans_error(make(tmp_path), "configurations",
                'unknown configuration "3d"; available: 2d, 3d_lowres, 3d_fullres, 3d_cascade_fullres', "3d")


def test_inheritance_cycle(tmp_path):
    def edit(p):
        p["configurations"]["a"] = {"inherits_from": "b"}
        p["configurations"]["b"] = {"inherits_from": "c"}
        p["configurations"]["c"] = {"inherits_from": "a"}
    plans_error(make(tmp_path, edit), "configurations.c.inherits_from", "inheritance cycle: a -> b -> c -> a", "a")


def test_self_inheritance(tmp_path):
    model_dir = make(tmp_path, lambda p: p["configurations"]["2d"].update(inherits_from="2d"))
    plans_error(model_dir, "configurations.2d.inherits_from", "inheritance cycle: 2d -> 2d", "2d")


def test_unknown_parent(tmp_path):
    model_dir = make(tmp_path, lambda p: p["configurations"]["3d_cascade_fullres"].update(inherits_from="3d_full"))
    plans_error(model_dir, "configurations.3d_cascade_fullres.inherits_from",
                'names unknown configuration "3d_full"; available: 2d, 3d_lowres, 3d_fullres, 3d_cascade_fullres',
                "3d_cascade_fullres")


def test_previous_stage_must_exist(tmp_path):
    model_dir = make(tmp_path, lambda p: p["configurations"].pop("3d_lowres"))
    plans_error(model_dir, "configurations.3d_cascade_fullres.previous_stage",
                'names configuration "3d_lowres", which is not in the plans; available: 2d, 3d_fullres, '
                "3d_cascade_fullres", "3d_cascade_fullres")


# ---- old plans ----

def old(plans):
    plans["configurations"]["3d_fullres"] = to_old_format(plans["configurations"]["3d_fullres"])


def test_old_plans_unknown_class(tmp_path):
    model_dir = make(tmp_path, lambda p: (old(p), p["configurations"]["3d_fullres"].update(UNet_class_name="UNet")))
    plans_error(model_dir, "configurations.3d_fullres.UNet_class_name",
                'unknown architecture "UNet": the old-plans conversion only supports PlainConvUNet and '
                "ResidualEncoderUNet")


def test_old_plans_missing_key(tmp_path):
    model_dir = make(tmp_path, lambda p: (old(p), p["configurations"]["3d_fullres"].pop("unet_max_num_features")))
    plans_error(model_dir, "configurations.3d_fullres.unet_max_num_features", "missing required key")


def test_old_plans_lengths_name_the_old_keys(tmp_path):
    model_dir = make(tmp_path, lambda p: (old(p), p["configurations"]["3d_fullres"]["pool_op_kernel_sizes"].pop()))
    plans_error(model_dir, "configurations.3d_fullres.pool_op_kernel_sizes", "expected 6 entries (n_stages), found 5")


def test_old_plans_without_stages(tmp_path):
    model_dir = make(tmp_path, lambda p: (old(p), p["configurations"]["3d_fullres"].update(n_conv_per_stage_encoder=[])))
    plans_error(model_dir, "configurations.3d_fullres.n_conv_per_stage_encoder", "expected at least one stage")


# ---- labels, regions, channels ----

@pytest.mark.parametrize("labels, key_path, detail", [
    ({"a": 1}, "labels.background", "missing required key: nnU-Net needs a label named background with value 0"),
    ({"background": [0], "a": 1}, "labels.background", "background must be the single label 0, not a list"),
    ({"background": 1, "a": 2}, "labels.background", "background must be label 0, found 1"),
    ({"background": 0, "a": "1"}, "labels.a", "expected a label or a non-empty list of labels, found a string"),
    ({"background": 0, "a": []}, "labels.a", "expected a label or a non-empty list of labels, found an empty list"),
    ({"background": 0, "a": [1, -2]}, "labels.a[1]", "expected an integer from 0 to 2147483647, found -2"),
    ({"background": 0, "a": 1, "ignore": [2]}, "labels.ignore", "the ignore label must be an integer, found a list"),
    ({"background": 0, "a": 1, "b": 2, "ignore": 2}, "labels.ignore",
     "the ignore label must be the highest label value plus one (3), found 2"),
])
def test_bad_labels(tmp_path, labels, key_path, detail):
    dataset_error(make(tmp_path, dataset_edit=lambda d: d.update(labels=labels)), key_path, detail)


def test_regions_need_class_order(tmp_path):
    model_dir = make(tmp_path, dataset_edit=lambda d: d.update(labels=REGIONS))
    dataset_error(model_dir, "regions_class_order", "missing: region-based labels (lists of several labels) need "
                  "regions_class_order, one entry per foreground region")


def test_regions_class_order_length(tmp_path):
    model_dir = make(tmp_path, dataset_edit=lambda d: d.update(labels=REGIONS, regions_class_order=[1, 2]))
    dataset_error(model_dir, "regions_class_order", "expected 3 entries (one per foreground region), found 2")


def test_channel_names_and_modality_missing(tmp_path):
    model_dir = make(tmp_path, dataset_edit=lambda d: d.pop("channel_names"))
    dataset_error(model_dir, "channel_names", "missing required key (the legacy key modality is missing too)")


def test_channel_names_and_modality_disagree(tmp_path):
    model_dir = make(tmp_path, dataset_edit=lambda d: d.update(modality={"0": "CT"}))
    dataset_error(model_dir, "modality", "has 1 entries, but channel_names has 2")


def test_missing_file_ending(tmp_path):
    dataset_error(make(tmp_path, dataset_edit=lambda d: d.pop("file_ending")), "file_ending", "missing required key")


# ---- plans and dataset inconsistent with each other or themselves ----

@pytest.mark.parametrize("edit, key_path, detail", [
    (lambda p: p["configurations"]["3d_fullres"].update(normalization_schemes=["CTNormalization"]),
     "configurations.3d_fullres.normalization_schemes", "expected 2 entries (one per channel in dataset.json), found 1"),
    (lambda p: p["configurations"]["3d_fullres"].update(use_mask_for_norm=[False] * 3),
     "configurations.3d_fullres.use_mask_for_norm", "expected 2 entries (one per channel in dataset.json), found 3"),
    (lambda p: p["foreground_intensity_properties_per_channel"].pop("0"),
     "foreground_intensity_properties_per_channel.0", "channel 0 uses CTNormalization, which needs these properties"),
    (lambda p: p["foreground_intensity_properties_per_channel"]["0"].pop("percentile_99_5"),
     "foreground_intensity_properties_per_channel.0.percentile_99_5",
     "missing required key (CTNormalization of channel 0 needs it)"),
    (lambda p: p.update(transpose_forward=[0, 1, 1]), "transpose_forward", "expected a permutation of 0..2"),
    (lambda p: p.update(transpose_forward=[2, 0, 1], transpose_backward=[2, 0, 1]), "transpose_backward",
     "is not the inverse permutation of transpose_forward"),
    (lambda p: p.update(transpose_forward=[0, 1]), "transpose_forward", "expected 3 entries (one per image axis), found 2"),
])
def test_inconsistent_numbers(tmp_path, edit, key_path, detail):
    plans_error(make(tmp_path, edit), key_path, detail)


def test_no_configuration_and_no_checkpoint(tmp_path):
    model_dir = make(tmp_path)
    with pytest.raises(PlansError) as info:
        nnunet_export.read_model_config(model_dir)
    assert str(info.value) == (f"{model_dir}: no configuration given and no fold_*/checkpoint_final.pth or "
                               "checkpoint_best.pth to take it from; pass configuration= (for example one of: "
                               "2d, 3d_lowres, 3d_fullres, 3d_cascade_fullres)")


def test_configuration_from_an_unreadable_checkpoint_names_it(tmp_path):
    # Without configuration= the safe checkpoint reader supplies it; a broken file says so.
    model_dir = make(tmp_path)
    os.makedirs(os.path.join(model_dir, "fold_0"))
    open(os.path.join(model_dir, "fold_0", "checkpoint_final.pth"), "wb").close()
    with pytest.raises(nnunet_export.CheckpointError) as info:
        nnunet_export.read_model_config(model_dir)
    assert str(info.value) == f"checkpoint '{model_dir}/fold_0/checkpoint_final.pth': the file is empty (0 bytes)"


# ---- robustness: damaged files never crash, they raise PlansError ----

def test_truncated_and_corrupted_files_raise_plans_error(tmp_path):
    import random

    model_dir = make(tmp_path)
    with open(os.path.join(model_dir, "plans.json"), "rb") as f:
        good = f.read()
    rng = random.Random(1234)
    damaged = [good[:n] for n in range(0, len(good), max(1, len(good) // 60))]
    for _ in range(60):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.choice(b'{}[]",:0123456789.-eE \\x\x00\xff')
        damaged.append(bytes(data))
    raised = 0
    for data in damaged:
        with open(os.path.join(model_dir, "plans.json"), "wb") as f:
            f.write(data)
        try:
            nnunet_export.read_model_config(model_dir, "3d_cascade_fullres")
        except PlansError as e:
            assert "plans.json" in str(e)
            raised += 1
    # Truncations always fail; a few byte flips may still leave a valid file (e.g. digit to digit).
    assert raised >= len(damaged) - 60


# ---- resampling settings ----

RS = "configurations.3d_fullres.resampling_fn_data_kwargs"


def _data_kwargs(**changes):
    def edit(plans):
        plans["configurations"]["3d_fullres"]["resampling_fn_data_kwargs"].update(changes)
    return edit


@pytest.mark.parametrize("changes, key, detail", [
    ({"order": 7}, "order", "expected an integer from 0 to 5, found 7"),
    ({"order_z": "0"}, "order_z", "expected an integer, found a string"),
    ({"force_separate_z": 1}, "force_separate_z", "expected true, false or null, found a number"),
    ({"separate_z_anisotropy_threshold": 0}, "separate_z_anisotropy_threshold", "expected a positive number"),
    ({"is_seg": None}, "is_seg", "expected a boolean, found null"),
    ({"antialias": True}, "antialias", "is not an argument of nnU-Net's resampling functions (expected is_seg, "
                                       "order, order_z, force_separate_z or separate_z_anisotropy_threshold)"),
], ids=["order_range", "order_z_type", "force_type", "threshold", "is_seg_type", "unknown_kwarg"])
def test_bad_resampling_kwargs_name_the_key(tmp_path, changes, key, detail):
    plans_error(make(tmp_path, _data_kwargs(**changes)), f"{RS}.{key}", detail)


def test_resampling_function_must_be_a_string(tmp_path):
    def edit(plans):
        plans["configurations"]["3d_fullres"]["resampling_fn_probabilities"] = 3
    plans_error(make(tmp_path, edit), "configurations.3d_fullres.resampling_fn_probabilities",
                "expected a string, found a number")


def test_missing_resampling_settings_take_the_function_defaults(tmp_path):
    def edit(plans):
        del plans["configurations"]["3d_fullres"]["resampling_fn_seg"]
        del plans["configurations"]["3d_fullres"]["resampling_fn_seg_kwargs"]
    config = nnunet_export.read_model_config(make(tmp_path, edit), "3d_fullres")
    assert config.resampling["seg"] == {"function": None, "order": 3, "order_z": 0, "force_separate_z": False,
                                        "separate_z_anisotropy_threshold": 3.0}
    assert config.resampling["data"]["order"] == 3 and config.resampling["probabilities"]["order"] == 1
