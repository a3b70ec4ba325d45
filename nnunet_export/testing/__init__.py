"""Checks for users' own export tests: does the deployed file still hold, and predict like, the
trained model? Imported only when asked for (``import nnunet_export.testing``); nnunetv2 is needed
only by :func:`assert_matches_nnunet`. Both helpers raise a plain ``AssertionError``, so they
work in pytest, unittest or a script.

Example:
    >>> from nnunet_export.testing import assert_matches_nnunet, assert_weights_match
    >>> assert_weights_match("model.pt", model_dir, folds=[0, 1, 2, 3, 4])  # doctest: +SKIP
    >>> assert_matches_nnunet("model.pt", model_dir)  # doctest: +SKIP

The pytest plugin (``pytest -p nnunet_export --nnunet-model DIR --nnunet-export FILE``) gives
these as fixtures; ``nnunet-export verify FILE -m DIR`` runs both from the command line.
"""
from .predictions import assert_matches_nnunet
from .weights import assert_weights_match

__all__ = ["assert_matches_nnunet", "assert_weights_match"]
