"""What a notebook shows for a loaded model (repr and _repr_html_), and the typing files."""
from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest
import torch

import nnunet_export
from nnunet_export import _core

PACKAGE = Path(nnunet_export.__file__).resolve().parent


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: these networks are tiny, and on a shared, busy CPU two OpenMP threads
    waiting for each other made them ~50x slower. conftest restores the count after each test."""
    torch.set_num_threads(1)


def _expected_rows(model, fixture, folds: str) -> list[tuple[str, str]]:
    plans = json.loads((fixture.model_dir / "plans.json").read_text())
    dataset = json.loads((fixture.model_dir / "dataset.json").read_text())
    cfg = plans["configurations"][fixture.configuration]
    unique = {t.data_ptr(): t for t in list(model.parameters()) + list(model.buffers())}
    params = sum(t.numel() for t in unique.values() if isinstance(t, torch.nn.Parameter))
    nbytes = sum(t.numel() * t.element_size() for t in unique.values())
    return [
        ("architecture", cfg["architecture"]["network_class_name"].rsplit(".", 1)[-1]),
        ("configuration", f"{fixture.configuration} ({fixture.plans_name}, {fixture.dataset_name})"),
        ("trainer", fixture.trainer),
        ("folds", f"{folds}  [checkpoint_final.pth]"),
        ("parameters", f"{params:,} ({nbytes / 2**20:.1f} MiB)"),
        ("patch size", " x ".join(str(p) for p in cfg["patch_size"])),
        ("channels", f"1 in, {len(dataset['labels'])} out"),
        ("labels", ", ".join(f"{k}={v}" for k, v in dataset["labels"].items())),
        ("mirroring axes", "(0, 1, 2)"),
        ("scriptable", "yes"),
    ]


def test_repr_and_html_show_what_the_model_is(nnunet_fixture):
    fixture = nnunet_fixture("multifold")
    model = nnunet_export.load_complete(fixture.model_dir, folds=[0, 1])
    rows = _expected_rows(model, fixture, "0, 1")
    assert rows[0] == ("architecture", "PlainConvUNet")
    width = max(len(k) for k, _ in rows)
    assert repr(model) == "NnUNetModel(\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows) + "\n)"
    html = model._repr_html_()
    assert html.startswith("<table><caption>NnUNetModel</caption>") and html.endswith("</table>")
    for key, value in rows:
        assert (f"<tr><th style='text-align:left'>{key}</th><td style='text-align:left'>{value}</td></tr>"
                in html), key


def test_repr_names_why_a_model_is_not_scriptable_and_html_escapes(nnunet_fixture):
    fixture = nnunet_fixture("2d")
    model = nnunet_export.load_complete(fixture.model_dir, folds=0)
    config = dataclasses.replace(model.info.config, labels={"background": 0, "<b>&</b>": 1})
    info = dataclasses.replace(model.info, config=config, scriptable=False,
                               not_scriptable_reason="a <custom> trainer")
    odd = nnunet_export.NnUNetModel(model.network, info)
    assert "  scriptable      no: a <custom> trainer" in repr(odd).splitlines()
    assert "  labels          background=0, <b>&</b>=1" in repr(odd).splitlines()
    html = odd._repr_html_()
    assert "<td style='text-align:left'>no: a &lt;custom&gt; trainer</td>" in html
    assert "background=0, &lt;b&gt;&amp;&lt;/b&gt;=1" in html
    assert "<custom>" not in html and "<b>" not in html


def test_typing_files_cover_the_c_core():
    assert (PACKAGE / "py.typed").is_file()
    stub = ast.parse((PACKAGE / "_core.pyi").read_text())
    declared = {node.name for node in stub.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    declared |= {node.target.id for node in stub.body if isinstance(node, ast.AnnAssign)}
    exposed = {name for name in dir(_core) if not name.startswith("__") or name == "__version__"}
    assert declared == exposed
    classes = {node.name: node for node in stub.body if isinstance(node, ast.ClassDef)}
    assert classes, "the stub declares no class"
    for name, node in classes.items():
        bases = [b.id for b in node.bases]
        assert bases == [base.__name__ for base in getattr(_core, name).__bases__ if base is not object], name
