"""The export test a team keeps in its own CI: the deployed file still is the trained model.

    pytest -p nnunet_export test_my_export.py --nnunet-model MODEL_DIR --nnunet-export model.pt [--nnunet-folds 0 1 2 3 4]

Without --nnunet-export the model is exported to a temporary file first. This project's CI runs
it on the shipped demo model: --nnunet-model examples/demo_model.
"""
from nnunet_export.testing import assert_matches_nnunet, assert_weights_match


def test_weights_are_the_checkpoints(nnunet_exported, nnunet_model_dir, nnunet_folds):
    assert_weights_match(nnunet_exported, nnunet_model_dir, folds=nnunet_folds)


def test_predictions_are_nnunets(nnunet_exported, nnunet_model_dir, nnunet_folds):
    assert_matches_nnunet(nnunet_exported, nnunet_model_dir, folds=nnunet_folds)
