"""Fuzz target: the plans.json / dataset.json reader (csrc/json_read.c, plans.c, plans_arch.c,
labels.c; cJSON underneath).

Input: one byte choosing the configuration name, then plans.json, then SEPARATOR, then
dataset.json (without SEPARATOR the whole rest is plans.json and dataset.json is the fixed
fuzz/work/seeds/dataset_default.json). Each execution writes both files and calls
_core.read_plans(plans, dataset, configuration). Seeds: plans and datasets of the real fixture
model folders, the planner plans of tests/data and the variants of tests/plans_cases.py.
"""
import os

import fuzz_common

core = fuzz_common.load_core()
scratch = fuzz_common.Scratch("plans.json", "dataset.json")
SEPARATOR = fuzz_common.PLANS_SEPARATOR
CONFIGURATIONS = fuzz_common.PLANS_CONFIGURATIONS
DEFAULT_DATASET = os.path.join(fuzz_common.HERE, "work", "seeds", "dataset_default.json")
with open(DEFAULT_DATASET, "rb") as f:
    DATASET = f.read()


def split(data: bytes):
    if not data:
        return CONFIGURATIONS[0], b"", DATASET
    configuration = CONFIGURATIONS[data[0] % len(CONFIGURATIONS)]
    plans, sep, dataset = data[1:].partition(SEPARATOR)
    return configuration, plans, dataset if sep else DATASET


def test_one_input(data: bytes) -> None:
    configuration, plans, dataset = split(data)
    plans_path = scratch.write("plans.json", plans)
    dataset_path = scratch.write("dataset.json", dataset)
    try:
        core.read_plans(plans_path, dataset_path, configuration)
    except core.ExportError:
        pass


if __name__ == "__main__":
    fuzz_common.run(test_one_input)
