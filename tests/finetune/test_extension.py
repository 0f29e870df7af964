"""User [CLS] treatments without editing isoprobe: README's "Add your own treatment" example as a module of a
project's `treatments/` folder (validated in params.yaml like a built-in, built, logged), an installed
package's entry point, clear errors; and end to end through `dvc repro` on a tiny BERT: fine-tuning,
embed_post and the report's column."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from e2e_repo import DVC, copy_repo, sh, small_params
from pydantic import BaseModel
from safetensors import safe_open

from conftest import REPO
from isoprobe.core.config import load_params
from isoprobe.core.errors import IsoprobeError
from isoprobe.core.treatments import (
    ENTRY_POINT_GROUP,
    get_treatment,
    register_treatment,
    reset_user_treatments,
    treatment_names,
)
from isoprobe.finetune.heads import ClassifierHead, make_normalizer
from isoprobe.finetune.outputs import flat_params

README = (REPO / "README.md").read_text(encoding="utf-8")
DOC = re.search(r"^## Add your own treatment\n(.*?)^## ", README, re.S | re.M).group(1)


def doc_block(language: str) -> str:
    """The first fenced `language` block of README's "Add your own treatment"."""
    found = re.search(rf"```{language}\n(.*?)```", DOC, re.S)
    assert found, f"no {language} block in README's 'Add your own treatment'"
    return found.group(1)


EXAMPLE = doc_block("python")  # treatments/rmsnorm.py
SELECT = yaml.safe_load(doc_block("yaml"))  # the params.yaml lines that select it


def with_example(params: dict, heads: dict | None = None) -> dict:
    """`params` with the docs' selection of the example (its `finetune.heads.rmsnorm` replaced by
    `heads` when given)."""
    params["finetune"]["methods"] = list(SELECT["finetune"]["methods"])
    params["finetune"]["heads"].update(SELECT["finetune"]["heads"])
    if heads is not None:
        params["finetune"]["heads"]["rmsnorm"] = heads
    return params


def project(root: Path, heads: dict | None = None, files: dict[str, str] | None = None) -> Path:
    """A project folder: the repository's params.yaml selecting the docs' example, treatments/."""
    params = with_example(yaml.safe_load((REPO / "params.yaml").read_text()), heads)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name, text in {"rmsnorm.py": EXAMPLE, **(files or {})}.items():
        (root / "treatments" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "treatments" / name).write_text(text)
    return root


@pytest.fixture(autouse=True)
def builtins_only():
    reset_user_treatments()
    yield
    reset_user_treatments()


# --------------------------------------------------------------------------- unit


def test_docs_example_is_a_treatment_like_the_builtins(tmp_path):
    assert "rmsnorm" not in treatment_names()
    params = load_params(project(tmp_path) / "params.yaml")
    assert params.finetune.methods == SELECT["finetune"]["methods"]
    assert "rmsnorm" in params.finetune.methods
    assert params.finetune.heads.options("rmsnorm") == {"eps": 1e-6}
    t = get_treatment("rmsnorm")
    assert not t.builtin and re.fullmatch(r"treatments/rmsnorm\.py sha256:[0-9a-f]{16}", t.origin)

    torch.manual_seed(0)
    h = ClassifierHead("rmsnorm", 8, 3, 0.1, params.finetune.heads.options("rmsnorm")).train()
    assert type(h.norm).__name__ == "RMSNorm" and h.norm.eps == 1e-6
    x = 5 * torch.randn(16, 8) + 3
    logits, z = h(x)
    assert logits.shape == (16, 3)
    torch.testing.assert_close(z.pow(2).mean(-1), torch.ones(16), rtol=1e-4, atol=1e-4)
    logits.sum().backward()
    assert h.norm.weight.grad is not None and torch.isfinite(h.norm.weight.grad).all()
    assert make_normalizer("rmsnorm", 8).eps == 1e-6  # the options model's default

    flat = flat_params(params, "tweets", "rmsnorm", 0)
    assert flat["heads.rmsnorm.eps"] == 1e-6 and flat["treatments.rmsnorm"] == t.origin
    assert flat["heads.isobn.beta"] == 0.5
    assert not any(k.startswith("treatments.") and k != "treatments.rmsnorm" for k in flat)
    shown = params.finetune.heads.model_dump(mode="json")  # what the report lists
    assert shown["rmsnorm"] == {"eps": 1e-6}


@pytest.mark.parametrize(
    ("heads", "expected"),
    [
        ({"eps": 0}, r"params\.yaml: finetune\.heads\.rmsnorm\.eps: Input should be greater than 0 \(got 0\)"),
        ({"epsilon": 1e-6}, r"params\.yaml: finetune\.heads\.rmsnorm\.epsilon: unknown key \(got 1e-06\)"),
        ({"eps": "small"}, r"finetune\.heads\.rmsnorm\.eps: Input should be a valid number"),
    ],
)  # fmt: skip
def test_bad_option_of_a_user_treatment_names_its_key(tmp_path, heads, expected):
    root = project(tmp_path, heads=heads)
    with pytest.raises(IsoprobeError, match=expected):
        load_params(root / "params.yaml")


def test_check_command_sees_the_project_treatments(tmp_path):
    root = project(tmp_path)
    ok = subprocess.run(
        [sys.executable, "-m", "isoprobe", "check"], cwd=root, capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    project(tmp_path, heads={"eps": -1.0})
    bad = subprocess.run(
        [sys.executable, "-m", "isoprobe", "check"], cwd=root, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == (
        "isoprobe: error: params.yaml: finetune.heads.rmsnorm.eps: "
        "Input should be greater than 0 (got -1.0)"
    )


def test_unknown_method_lists_the_user_treatments(tmp_path):
    root = project(tmp_path)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["finetune"]["methods"] = ["baseline", "rmsnrom"]
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(IsoprobeError) as err:
        load_params(root / "params.yaml")
    assert re.search(
        r"finetune\.methods\.1: not a registered treatment; registered: 'baseline', 'layernorm', "
        r"'batchnorm', 'standardize', 'isobn', 'whiten', 'rmsnorm' .*\(got 'rmsnrom'\)",
        str(err.value),
    )


def test_a_broken_treatment_module_is_named_and_leaves_nothing_registered(tmp_path):
    root = project(tmp_path, files={"zz_broken.py": "import math\n\nmath.sqrt(-1)\n"})
    with pytest.raises(IsoprobeError) as err:
        load_params(root / "params.yaml")
    msg = str(err.value)
    assert msg.startswith("treatments/zz_broken.py: cannot import the treatment module: ValueError")
    assert msg.endswith("zz_broken.py:3)")
    assert "rmsnorm" not in treatment_names()


def test_helpers_are_not_imported_and_relative_imports_work(tmp_path):
    helper = "EPS = 0.25\n"
    user = (
        "from isoprobe import register_treatment\n"
        "from torch import nn\n\n"
        "from ._shared import EPS\n\n"
        "register_treatment('shared_eps', None, lambda hidden: nn.LayerNorm(hidden, eps=EPS))\n"
    )
    root = project(tmp_path, files={"_shared.py": helper, "uses_helper.py": user})
    params = load_params(root / "params.yaml")
    assert params.finetune.heads.options("shared_eps") == {}
    assert make_normalizer("shared_eps", 4).eps == 0.25
    with pytest.raises(ValueError, match="shared_eps takes no options"):
        make_normalizer("shared_eps", 4, {"eps": 1.0})


def test_registration_errors():
    from torch import nn

    with pytest.raises(IsoprobeError, match="'isobn' is built into isoprobe"):
        register_treatment("isobn", None, lambda hidden: nn.Identity())
    with pytest.raises(IsoprobeError, match="must match"):
        register_treatment("My-Norm", None, lambda hidden: nn.Identity())

    class Loose(BaseModel):
        scale: float = 1.0

    with pytest.raises(IsoprobeError, match="must forbid unknown keys"):
        register_treatment("loose", Loose, lambda hidden, scale: nn.Identity())
    with pytest.raises(IsoprobeError, match="build must be a callable"):
        register_treatment("nobuild", None, "no module reference")
    register_treatment("twice", None, lambda hidden: nn.Identity())
    with pytest.raises(IsoprobeError, match="registered twice"):
        register_treatment("twice", None, "torch.nn:Identity")
    register_treatment("notmodule", None, lambda hidden: "a string")
    with pytest.raises(TypeError, match="not a torch.nn.Module"):
        make_normalizer("notmodule", 4)


def test_entry_point_of_an_installed_package(tmp_path, monkeypatch):
    """A distribution on sys.path with an `isoprobe.treatments` entry point; its name and version
    are recorded (DVC cannot hash installed code)."""
    site = tmp_path / "site"
    info = site / "isoprobe_demo_norms-0.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: isoprobe-demo-norms\nVersion: 0.3\n"
    )
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nscaled = demo_norms:SCALED\n")
    (site / "demo_norms.py").write_text(
        "from pydantic import Field\n"
        "from isoprobe import Treatment, TreatmentOptions\n\n\n"
        "class ScaledOptions(TreatmentOptions):\n"
        "    factor: float = Field(2.0, gt=0)\n\n\n"
        "def scaled(hidden, factor):\n"
        "    import torch\n\n"
        "    class Scaled(torch.nn.Module):\n"
        "        def forward(self, x):\n"
        "            return factor * x\n\n"
        "    return Scaled()\n\n\n"
        "SCALED = Treatment('scaled', ScaledOptions, 'demo_norms:scaled')\n"
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "demo_norms", raising=False)
    (tmp_path / "project").mkdir()
    root = project(tmp_path / "project")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["finetune"]["methods"] = ["scaled", "rmsnorm"]
    params["finetune"]["heads"]["scaled"] = {"factor": 3.0}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    p = load_params(root / "params.yaml")
    assert p.finetune.methods == ["scaled", "rmsnorm"]
    t = get_treatment("scaled")
    assert t.origin.startswith("isoprobe-demo-norms 0.3 (entry point isoprobe.treatments: scaled")
    assert torch.equal(
        make_normalizer("scaled", 4, {"factor": 3.0})(torch.ones(2, 4)), 3 * torch.ones(2, 4)
    )
    flat = flat_params(p, "tweets", "scaled", 0)
    assert flat["heads.scaled.factor"] == 3.0 and flat["treatments.scaled"] == t.origin
    params["finetune"]["heads"]["scaled"] = {"factor": 0}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(
        IsoprobeError, match=r"finetune\.heads\.scaled\.factor: Input should be greater than 0"
    ):
        load_params(root / "params.yaml")  # fmt: skip
    sys.modules.pop("demo_norms", None)


# --------------------------------------------------------------------------- end to end


INSTANCES = [f"{stage}@tweets-{m}-0" for stage in ("finetune", "embed_post") for m in SELECT["finetune"]["methods"]]  # fmt: skip


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_bert) -> Path:
    """A project copy with the docs' example in treatments/ and a tiny BERT: DVC runs the
    fine-tuning and embed_post instances of both methods and what they need (1 seed, a few dozen
    rows), then the report stage script runs (it lists the stages not run as missing). MLflow is
    off to keep it short: the logged params are `flat_params`, tested above."""
    params = with_example(small_params())
    params["model"]["name"] = str(tiny_bert)
    params["finetune"]["seeds"] = [0]
    params["tracking"]["enabled"] = False
    dest = copy_repo(tmp_path_factory.mktemp("extension"), params)
    (dest / "treatments" / "rmsnorm.py").write_text(EXAMPLE)
    sh(dest, DVC, "repro", *INSTANCES)
    sh(dest, sys.executable, "stages/report.py")
    return dest


@pytest.mark.e2e
def test_user_treatment_end_to_end(repo):
    methods = SELECT["finetune"]["methods"]
    for m in methods:
        ft = json.loads((repo / f"metrics/finetune/tweets/{m}/0.json").read_text())
        assert ft["status"] == "ok" and "accuracy" in ft["test"]
        iso = json.loads((repo / f"metrics/isotropy/tweets/{m}/0.json").read_text())
        assert "head_input" in iso
    head = json.loads((repo / "models/tweets/rmsnorm/0/head.json").read_text())
    assert head["method"] == "rmsnorm" and head["options"] == {"eps": 1e-6}
    assert head["treatment"].startswith("treatments/rmsnorm.py sha256:")
    assert "treatment" not in json.loads((repo / "models/tweets/baseline/0/head.json").read_text())
    with safe_open(str(repo / "models/tweets/rmsnorm/0/head.safetensors"), "pt") as f:
        assert "norm.weight" in set(f.keys())

    html = (repo / "report/index.html").read_text(encoding="utf-8")
    md = (repo / "report/summary.md").read_text(encoding="utf-8")
    assert "rmsnorm" in html and "rmsnorm" in md


def _treatment_deps() -> dict[str, bool]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {
        s: "treatments" in [str(d).rstrip("/") for d in stages[s].get("do", stages[s])["deps"]]
        for s in ("finetune", "embed_post", "report")
    }


@pytest.mark.e2e
@pytest.mark.skipif(
    not all(_treatment_deps().values()),
    reason=f"dvc.yaml does not list treatments/ as a dep yet: {_treatment_deps()}",
)
def test_dvc_sees_the_treatment_code(repo):
    """Editing the user's treatment makes its stages out of date (DVC hashes treatments/)."""
    assert "up to date" in sh(repo, DVC, "status", *INSTANCES).stdout
    path = repo / "treatments" / "rmsnorm.py"
    path.write_text(EXAMPLE + "\n# edited\n")
    try:
        status = sh(repo, DVC, "status", *INSTANCES).stdout
    finally:
        path.write_text(EXAMPLE)
    for stage in INSTANCES:
        assert stage in status, status
    assert "treatments" in status
    assert "up to date" in sh(repo, DVC, "status", *INSTANCES).stdout
