"""nnunet-export / python -m nnunet_export against real model folders."""
from __future__ import annotations

import os
import re
import site
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import torch

import nnunet_export
from nnunet_export import cli

REPO = Path(__file__).resolve().parent.parent
INSTALLED = os.environ.get("NNUNET_EXPORT_TEST_INSTALLED") == "1"  # set by scripts/test.sh


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: these networks are tiny, and on a shared, busy CPU two OpenMP threads
    waiting for each other made them ~50x slower. conftest restores the count after each test."""
    torch.set_num_threads(1)


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def table(out: str) -> dict[str, str]:
    rows = {}
    for line in out.strip().splitlines():
        key, value = re.split(r"\s{2,}", line, maxsplit=1)
        rows[key] = value
    return rows


def dataset_id(fixture) -> str:
    return str(int(re.match(r"Dataset(\d+)_", fixture.dataset_name).group(1)))


# ------------------------------------------------------------------ export


def test_export_by_dataset_id_under_nnunet_results(nnunet_fixture, tmp_path, capsys, monkeypatch):
    fixture = nnunet_fixture("3d_fullres")
    monkeypatch.setenv("nnUNet_results", str(fixture.results_dir))
    out_file = tmp_path / "model.pt"
    code, out, err = run(capsys, "-d", dataset_id(fixture), "-c", "3d_fullres", "-f", "0", "-o", out_file)
    assert code == 0, err
    rows = table(out)
    assert rows["model"] == str(fixture.model_dir)
    assert rows["folds"] == "0"
    assert rows["device"] == "cpu"
    assert rows["file"] == str(out_file)
    meta = nnunet_export.read_metadata(out_file)
    assert rows["parameters"] == f"{meta['parameters']:,}"
    assert re.fullmatch(r"\d+\.\d\d MiB \(weights \d+\.\d\d MiB\)", rows["size"])
    assert rows["sha256 fold 0"] == meta["weights_sha256"]["0"]
    assert re.fullmatch(r"max \|diff\| \S+ on inputs .*", rows["verified"])
    assert float(rows["verified"].split()[2]) <= 1e-6
    assert re.fullmatch(r"\d+\.\d\d s", rows["time"])
    assert rows["total time"].endswith(" s (loading, export and verification)")
    assert f"[nnunet-export] read fold 0 (1/1): {fixture.model_dir / 'fold_0' / 'checkpoint_final.pth'}" in err
    assert "[nnunet-export] done in " in err
    assert meta["folds"] == [0] and meta["configuration"] == "3d_fullres"


@pytest.mark.parametrize("name,flags", [
    ("bn", ["-tr", "nnUNetTrainerBN"]),
    ("resenc", ["-p", "nnUNetResEncUNetMPlans"]),
])
def test_trainer_and_plans_select_the_model_folder(nnunet_fixture, tmp_path, capsys, monkeypatch, name, flags):
    fixture = nnunet_fixture(name)
    monkeypatch.setenv("nnUNet_results", str(fixture.results_dir))
    code, out, err = run(capsys, "-d", fixture.dataset_name, "-c", "3d_fullres", *flags, "-o", tmp_path / "m.pt",
                         "--no-verify")
    assert code == 0, err
    assert table(out)["model"] == str(fixture.model_dir)
    meta = nnunet_export.read_metadata(tmp_path / "m.pt")
    assert meta["trainer_name"] == fixture.trainer
    assert meta["plans_name"] == fixture.plans_name


def test_model_folder_with_several_folds_and_no_verify(nnunet_fixture, tmp_path, capsys):
    fixture = nnunet_fixture("multifold")
    code, out, err = run(capsys, "-m", fixture.model_dir, "-f", "0", "1", "-o", tmp_path / "two.pt", "--no-verify",
                         "--device", "cpu", "--num-threads", "1")
    assert code == 0, err
    rows = table(out)
    assert rows["folds"] == "0, 1"
    assert rows["verified"] == "no (verify=False)"
    assert set(k for k in rows if k.startswith("sha256")) == {"sha256 fold 0", "sha256 fold 1"}
    assert rows["sha256 fold 0"] != rows["sha256 fold 1"]
    assert "read fold 0 (1/2)" in err and "read fold 1 (2/2)" in err
    assert "verifying" not in err
    assert nnunet_export.read_metadata(tmp_path / "two.pt")["folds"] == [0, 1]


def test_checkpoint_name_and_trace(nnunet_fixture, tmp_path, capsys):
    fixture = nnunet_fixture("best")
    code, out, err = run(capsys, "-m", fixture.model_dir, "-f", "0", "-chk", "checkpoint_best.pth", "--trace",
                         "-o", tmp_path / "best.pt")
    assert code == 0, err
    meta = nnunet_export.read_metadata(tmp_path / "best.pt")
    assert meta["checkpoint_name"] == "checkpoint_best.pth"
    assert meta["export_method"] == "trace"
    assert table(out)["format"] == "torchscript (trace)"
    code, out_final, err = run(capsys, "-m", fixture.model_dir, "-f", "0", "-o", tmp_path / "final.pt")
    assert code == 0, err
    assert table(out)["sha256 fold 0"] != table(out_final)["sha256 fold 0"]


def test_pt2_format(nnunet_fixture, tmp_path, capsys):
    fixture = nnunet_fixture("2d")
    code, out, err = run(capsys, "-m", fixture.model_dir, "-f", "0", "--format", "pt2", "-o", tmp_path / "m.pt2")
    assert code == 0, err
    assert table(out)["format"] == "pt2 (torch.export)"
    assert nnunet_export.read_metadata(tmp_path / "m.pt2")["file_format"] == "pt2"
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    model = nnunet_export.load_complete(fixture.model_dir, folds=0)
    x = torch.randn(1, 1, *model.info.config.patch_size)
    with torch.no_grad():
        assert float((program(x) - model(x)).abs().max()) <= 1e-6


def test_export_command_and_bare_form_write_the_same_model(nnunet_fixture, tmp_path, capsys):
    fixture = nnunet_fixture("2d")
    tables = {}
    for form in (["export"], []):
        out_file = tmp_path / f"{form[0] if form else 'bare'}.pt"
        code, out, err = run(capsys, *form, "-m", fixture.model_dir, "-f", "0", "-o", out_file, "--no-verify")
        assert code == 0, err
        assert table(out)["file"] == str(out_file)
        assert err.splitlines()[-1].startswith("[nnunet-export] done in ")
        tables[bool(form)] = table(out)
    assert tables[True]["sha256 fold 0"] == tables[False]["sha256 fold 0"]
    assert tables[True]["sha256 fold 0"] == nnunet_export.read_metadata(tmp_path / "bare.pt")["weights_sha256"]["0"]
    assert tables[True]["parameters"] == tables[False]["parameters"]


# ------------------------------------------------------------------ exit codes


def test_usage_errors_exit_2(nnunet_fixture, tmp_path, capsys, monkeypatch):
    fixture = nnunet_fixture("3d_fullres")
    monkeypatch.setenv("nnUNet_results", str(fixture.results_dir))
    cases = [
        (["-d", "901", "-c", "3d_fullres"], "the following arguments are required: -o"),
        (["-d", "901", "-c", "3d_fullres", "-o", "x.pt", "--format", "tflite"],
         "argument --format: invalid choice: 'tflite' (choose from 'torchscript', 'pt2', 'onnx')"),
        (["-d", "901", "-c", "3d_fullres", "-o", "x.pt", "--bogus"], "unrecognized arguments: --bogus"),
    ]
    for argv, fragment in cases:
        for form in ([], ["export"]):  # the bare form is the export command
            code, out, err = run(capsys, *form, *argv)
            assert code == 2 and out == "", argv
            assert err.startswith("usage: nnunet-export export [-h] ")
            assert err.splitlines()[-1] == f"nnunet-export export: error: {fragment}", (form, argv)
    exact = [
        (["-m", fixture.model_dir, "-d", "901", "-c", "3d_fullres", "-o", tmp_path / "x.pt"],
         "give either -m MODEL_FOLDER or -d DATASET -c CONFIGURATION, not both"),
        (["-o", tmp_path / "x.pt"], "give -d DATASET -c CONFIGURATION (with optional -tr/-p) or -m MODEL_FOLDER"),
        (["-d", "999", "-c", "3d_fullres", "-o", tmp_path / "x.pt"],
         f"dataset id 999 must match exactly one Dataset999_* folder in {fixture.results_dir} (found none)"),
        (["-d", "Dataset999_Nothing", "-c", "3d_fullres", "-o", tmp_path / "x.pt"],
         f"dataset 'Dataset999_Nothing' has no folder in {fixture.results_dir}"),
        (["-d", "901", "-c", "2d", "-o", tmp_path / "x.pt"],
         f"no trained model at {fixture.results_dir / fixture.dataset_name / 'nnUNetTrainer__nnUNetPlans__2d'} "
         "(check -tr, -p and -c)"),
        (["-m", fixture.model_dir, "-o", tmp_path / "x.pt2", "--trace"], "--trace applies to TorchScript only"),
        (["-m", fixture.model_dir, "-o", tmp_path / "x.pt", "--device", "bogus"],
         "--device 'bogus' is not a torch device (e.g. cpu, cuda, cuda:1)"),
    ]
    for argv, message in exact:
        for form in ([], ["export"]):
            code, out, err = run(capsys, *form, *argv)
            assert (code, out, err) == (2, "", f"nnunet-export: error: {message}\n"), (form, argv)
    monkeypatch.delenv("nnUNet_results")
    code, out, err = run(capsys, "-d", "901", "-c", "3d_fullres", "-o", tmp_path / "x.pt")
    assert (code, err) == (2, "nnunet-export: error: -d needs $nnUNet_results to be set (or pass the folder with -m)\n")
    assert not list(tmp_path.iterdir())


def test_failures_exit_1_with_one_line_and_traceback_only_when_verbose(nnunet_fixture, tmp_path, capsys):
    missing = tmp_path / "no_such_model"
    code, out, err = run(capsys, "-m", missing, "-o", tmp_path / "x.pt")
    assert (code, out, err) == (1, "", f"nnunet-export: error: model folder {str(missing)!r} does not exist\n")
    code, out, err = run(capsys, "-m", missing, "-o", tmp_path / "x.pt", "--verbose")
    assert code == 1
    assert err.startswith("Traceback (most recent call last):")
    assert "ModelFolderError" in err
    assert err.endswith(f"nnunet-export: error: model folder {str(missing)!r} does not exist\n")

    for argv in (["--verbose", "-m", missing, "-o", tmp_path / "x.pt"],  # bare form, option first
                 ["export", "--verbose", "-m", missing, "-o", tmp_path / "x.pt"]):
        code, out, err = run(capsys, *argv)
        assert code == 1 and err.startswith("Traceback (most recent call last):"), argv
        assert err.endswith(f"nnunet-export: error: model folder {str(missing)!r} does not exist\n")
    code, out, err = run(capsys, "inspect", "--verbose", tmp_path / "garbage")
    assert (code, err) == (2, f"nnunet-export: error: {str(tmp_path / 'garbage')!r} is neither a model folder nor a file\n")

    fixture = nnunet_fixture("multifold")
    code, out, err = run(capsys, "-m", fixture.model_dir, "-f", "7", "-o", tmp_path / "x.pt")
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("nnunet-export: error: ") and "fold_7" in err
    assert "Traceback" not in err


def test_help_lists_the_commands_and_each_command_has_its_own(capsys):
    code, out, err = run(capsys, "--help")
    assert (code, err) == (0, "")
    assert out.startswith("usage: nnunet-export [-h] [--version] COMMAND ...\n")
    commands = re.findall(r"^    (\w+) {2,}", out, flags=re.M)
    assert commands == ["export", "inspect", "predict", "triton", "verify"] == list(cli.COMMANDS)
    assert "'nnunet-export -d 1 -c 3d_fullres -o model.pt'" in " ".join(out.split())
    code, out, err = run(capsys, "export", "--help")
    assert (code, err) == (0, "") and out.startswith("usage: nnunet-export export [-h]") and "-chk CHECKPOINT" in out
    code, out, err = run(capsys, "inspect", "-h")
    assert (code, err) == (0, "") and out.startswith("usage: nnunet-export inspect [-h] [--verbose] path")
    assert run(capsys, "--version") == (0, f"nnunet-export {nnunet_export.__version__}\n", "")


def test_unknown_or_missing_command_exits_2(capsys):
    code, out, err = run(capsys, "exprot", "-o", "x.pt")
    assert (code, out) == (2, "")
    assert err.endswith("nnunet-export: error: argument COMMAND: invalid choice: 'exprot' "
                        "(choose from 'export', 'inspect', 'predict', 'triton', 'verify')\n")
    code, out, err = run(capsys)
    assert (code, out) == (2, "")
    assert err == ("usage: nnunet-export [-h] [--version] COMMAND ...\n"
                   "nnunet-export: error: the following arguments are required: COMMAND\n")


# ------------------------------------------------------------------ inspect


def test_inspect_model_folder(nnunet_fixture, capsys):
    fixture = nnunet_fixture("multifold")
    code, out, err = run(capsys, "inspect", fixture.model_dir)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"model folder  {fixture.model_dir}"
    for fold in (0, 1, 2, "all"):
        assert f"  {'fold_' + str(fold):<9} checkpoint_final.pth" in lines
    assert f"  configuration 3d_fullres, plans nnUNetPlans, dataset {fixture.dataset_name}" in lines
    assert "  architecture  dynamic_network_architectures.architectures.unet.PlainConvUNet" in lines


def test_inspect_checkpoint_reads_it_safely(nnunet_fixture, capsys, monkeypatch):
    fixture = nnunet_fixture("3d_fullres")
    path = fixture.model_dir / "fold_0" / "checkpoint_final.pth"
    reference = torch.load(path, map_location="cpu", weights_only=False)

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", refuse)
    code, out, err = run(capsys, "inspect", path)
    assert code == 0, err
    weights = reference["network_weights"]
    values = sum(t.numel() for t in {t.data_ptr(): t for t in weights.values()}.values())
    assert out.splitlines() == [
        f"checkpoint  {path} (read safely: nothing executed, optimizer state not read)",
        f"  trainer        {reference['trainer_name']}",
        f"  configuration  3d_fullres, fold 0",
        f"  epoch          {reference['current_epoch']}",
        f"  mirroring axes {reference['inference_allowed_mirroring_axes']}",
        f"  weights        {len(weights)} keys, {values:,} values",
    ]


def test_inspect_exported_file(nnunet_fixture, tmp_path, capsys):
    fixture = nnunet_fixture("2d")
    assert run(capsys, "-m", fixture.model_dir, "-f", "0", "-o", tmp_path / "m.pt", "--no-verify")[0] == 0
    meta = nnunet_export.read_metadata(tmp_path / "m.pt")
    code, out, err = run(capsys, "inspect", tmp_path / "m.pt")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"exported file  {tmp_path / 'm.pt'} (torchscript, {meta['export_method']})"
    assert f"  {'configuration':<22} 2d" in lines
    assert f"  {'folds':<22} [0]" in lines
    assert f"  sha256 fold {'0':<10} {meta['weights_sha256']['0']}" in lines


def test_inspect_garbage(tmp_path, capsys):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    code, out, err = run(capsys, "inspect", garbage)
    assert (code, out, err) == (
        1, "", f"nnunet-export: error: {str(garbage)!r} is not a checkpoint or exported file (not a ZIP archive)\n")

    not_torch = tmp_path / "other.zip"
    with zipfile.ZipFile(not_torch, "w") as archive:
        archive.writestr("hello.txt", "hello")
    code, out, err = run(capsys, "inspect", not_torch)
    assert code == 1 and out == "" and err.startswith("nnunet-export: error: ") and err.count("\n") == 1
    assert str(not_torch) in err

    code, out, err = run(capsys, "inspect", tmp_path / "missing")
    missing = str(tmp_path / "missing")
    assert (code, err) == (2, f"nnunet-export: error: {missing!r} is neither a model folder nor a file\n")
    code, out, err = run(capsys, "inspect")
    assert code == 2 and "the following arguments are required: path" in err


# ------------------------------------------------------------------ entry points


def test_python_dash_m_and_console_script_entry(tmp_path):
    """Both entry points, in fresh processes that import the nnunet_export this suite tests (the
    installed wheel under scripts/test.sh: the checkout is then not put on PYTHONPATH)."""
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 10)
    package_root = Path(nnunet_export.__file__).resolve().parent.parent
    env = dict(os.environ)
    # A checkout goes on PYTHONPATH; site-packages must not: ahead of the standard library, a
    # dependency's old PyPI backport (argparse) would shadow the real module.
    if package_root not in [Path(p).resolve() for p in site.getsitepackages()]:
        env["PYTHONPATH"] = str(package_root) + os.pathsep + os.environ.get("PYTHONPATH", "")
    expected = (f"nnunet-export: error: {str(garbage)!r} is not a checkpoint or exported file "
                "(not a ZIP archive)\n")
    commands = [[sys.executable, "-m", "nnunet_export", "inspect", str(garbage)]]
    script = Path(sys.executable).parent / "nnunet-export"
    if INSTALLED or script.is_file():
        commands.append([str(script), "inspect", str(garbage)])
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
        assert (result.returncode, result.stdout, result.stderr) == (1, "", expected), command
    version = subprocess.run([*commands[-1][:-2], "--version"], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=120)
    assert (version.returncode, version.stdout) == (0, f"nnunet-export {nnunet_export.__version__}\n")
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"nnunet-export": "nnunet_export.cli:main"}
