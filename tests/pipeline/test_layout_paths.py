"""dvc.yaml and `isoprobe.core.layout` name the same output paths: DVC declares them, the library
writes them; a path changed in one and not the other fails here."""

from __future__ import annotations

from pathlib import Path

import yaml

from isoprobe.core import layout

REPO = Path(__file__).resolve().parents[2]
VALUES = {"${item}": "T", "${item.task}": "T", "${item.method}": "M", "${item.seed}": "7",
          "${item.source}": "F"}  # fmt: skip


def declared(stage: str) -> set[str]:
    """Every out, metric and plot path of `stage`, with sample values for the templates."""
    body = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"][stage]
    body = body.get("do", body)
    paths = set()
    for section in ("outs", "metrics", "plots"):
        for entry in body.get(section, []):
            path = entry if isinstance(entry, str) else next(iter(entry))
            for template, value in VALUES.items():
                path = path.replace(template, value)
            paths.add(path)
    return paths


def test_pretrained_stages():
    assert str(layout.source_link("T")) in declared("link")
    assert str(layout.prepared_dir("T")) in declared("prepare")
    assert str(layout.embeddings_dir("T")) in declared("embed")
    iso = declared("isotropy")
    assert {str(layout.isotropy_metrics_file("T")), str(layout.isotropy_arrays_file("T")),
            str(layout.isotropy_plots_dir("T"))} <= iso  # fmt: skip
    for kind in ("by_layer", "std_sorted"):
        assert str(layout.isotropy_plot_csv("T", "pretrained", kind)) in iso


def test_finetune_and_embed_post():
    ft = declared("finetune")
    assert {str(layout.model_dir("T", "M", 7)), str(layout.finetune_metrics_file("T", "M", 7)),
            str(layout.finetune_plot_file("T", "M", 7)),
            str(layout.checkpoint_dir("T", "M", 7))} <= ft  # fmt: skip
    encoder = layout.finetuned_encoder("M", 7)
    post = declared("embed_post")
    assert str(layout.embeddings_dir("T", encoder)) in post
    assert str(layout.isotropy_metrics_file("T", encoder)) in post
    assert str(layout.isotropy_plot_csv("T", encoder, "by_layer")) in post


def test_probe_stages():
    for stage, encoder in (
        ("probe", layout.probed_encoder("T")),
        ("probe_words", layout.probed_encoder("T")),
        ("probe_post", layout.probed_encoder("T", "M", 7)),
        ("probe_cross", layout.probed_encoder("T", "M", 7, "F")),
    ):
        paths = declared(stage)
        for path in (layout.probe_metrics_file, layout.probe_arrays_file, layout.probe_plot_file):
            assert str(path("T", encoder)) in paths, (stage, path.__name__)
    assert str(layout.probe_summary_dir()) in declared("probe_summary")
