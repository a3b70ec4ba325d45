"""The switch of nnunet_export's pytest plugin.

pytest loads this module from the ``pytest11`` entry point ``nnunet_export`` in EVERY run where
nnunet_export is installed, so it imports nothing (not nnunet_export, not torch, not pytest): it
only declares the options. A run that enables the plugin, with ``-p nnunet_export`` (also under
PYTEST_DISABLE_PLUGIN_AUTOLOAD=1) or ``nnunet_export = true`` in the ini file, loads
``nnunet_export.pytest_plugin`` and its fixtures; any other run never imports nnunet_export.
"""
import os

ENTRY_POINT = "nnunet_export"
INI_NAME = "nnunet_export"
_OPTIONS = ("--nnunet-model", "--nnunet-export", "--nnunet-folds", "--nnunet-checkpoint")

kNotEnabledError = ("{option} is an option of the nnunet_export plugin, which is off: enable it with "
                    "-p nnunet_export or 'nnunet_export = true' in the pytest ini file")


def pytest_addoption(parser):
    group = parser.getgroup("nnunet_export", "nnunet_export (enable with -p nnunet_export)")
    group.addoption("--nnunet-model", metavar="DIR", default=None,
                    help="the trained <Trainer>__<Plans>__<configuration> folder (fixture nnunet_model_dir)")
    group.addoption("--nnunet-export", metavar="FILE", default=None,
                    help="the exported file to check (fixture nnunet_exported); without it, the model is "
                    "exported to a temporary file")
    group.addoption("--nnunet-folds", metavar="FOLD", nargs="+", default=None,
                    help="the folds the export holds (fixture nnunet_folds; default: its metadata's)")
    group.addoption("--nnunet-checkpoint", metavar="NAME", default=None,
                    help="checkpoint file name (fixture nnunet_checkpoint_name; default checkpoint_final.pth)")
    parser.addini(INI_NAME, type="bool", default=False,
                  help="enable the nnunet_export plugin (fixtures nnunet_model_dir, nnunet_exported, ...)")


def enabled(config) -> bool:
    """Whether this run asked for the plugin: ``-p nnunet_export``, PYTEST_PLUGINS or the ini."""
    requested = list(getattr(config.known_args_namespace, "plugins", None) or [])
    requested += [name.strip() for name in os.environ.get("PYTEST_PLUGINS", "").split(",")]
    return ENTRY_POINT in requested or bool(config.getini(INI_NAME))


def pytest_configure(config):
    if enabled(config):
        from nnunet_export import pytest_plugin

        if not config.pluginmanager.is_registered(pytest_plugin):
            config.pluginmanager.register(pytest_plugin, "nnunet_export.pytest_plugin")
        return
    for option in _OPTIONS:
        if config.getoption(option.lstrip("-").replace("-", "_")) is not None:
            from pytest import UsageError

            raise UsageError(kNotEnabledError.format(option=option))
