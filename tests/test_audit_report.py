"""Audit outputs on a tiny folder dataset with hand-made out-of-fold probabilities: ranked CSVs,
the offline HTML report, suggested masks, and the optional cleanlab scores."""
from __future__ import annotations

import base64
import csv
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from segssl.audit.cleanlab_scores import require_cleanlab
from segssl.audit.oof import oof_path, save_probs
from segssl.audit.pipeline import add_cleanlab, score_items
from segssl.audit.report import write_csv, write_html, write_regions_csv, write_suggestions
from segssl.audit.scoring import AuditParams
from segssl.data.adapters.folder import FolderAdapter
from segssl.errors import SegsslError

from .helpers import REPO
from .test_audit_scoring import probs_of, square

P = AuditParams(band=2, min_area=4, half_area=0.09)
NAMES = ["background", "disc", "box"]


@pytest.fixture()
def audited(tmp_path: Path) -> dict:
    """Four 20 x 20 images: clean, erased object, relabelled object, shifted contour."""
    truth = square(5, 11, 5, 11)
    given = {
        "a_clean": truth,
        "b_erased": np.zeros((20, 20), np.int64),
        "c_relabelled": square(5, 11, 5, 11, cls=2),
        "d_shifted": square(5, 11, 3, 9),
    }
    data, oof = tmp_path / "data", tmp_path / "work" / "oof"
    for name, mask in given.items():
        (data / "img").mkdir(parents=True, exist_ok=True)
        (data / "lbl").mkdir(exist_ok=True)
        cv2.imwrite(str(data / "img" / f"{name}.png"), np.full((20, 20), 90, np.uint8) + 60 * (truth == 1).astype(np.uint8))
        raw = mask.astype(np.uint8)
        raw[19, 19] = 255  # one "don't care" pixel
        cv2.imwrite(str(data / "lbl" / f"{name}.png"), raw)
        save_probs(oof_path(oof, name), probs_of(truth, conf=0.8 if name == "a_clean" else 0.9))
    adapter = FolderAdapter(str(data), {"train": {"images": "img", "masks": "lbl"}}, num_classes=3, in_channels=1,
                            class_names=NAMES, ignore_values=[255])
    items = adapter.items("train")
    results = score_items(adapter, items, oof, P, folds={"a_clean": 0, "b_erased": 1, "c_relabelled": 0, "d_shifted": 1})
    return {"adapter": adapter, "items": items, "results": results, "oof": oof, "data": data, "given": given, "tmp": tmp_path}


def test_ranking_puts_the_clean_image_last(audited: dict) -> None:
    results = audited["results"]
    assert [r.id for r in results][-1] == "a_clean" and results[-1].score == 0.0
    assert {r.id: r.regions[0]["type"] for r in results[:3]} == {"b_erased": "missing", "c_relabelled": "wrong_class", "d_shifted": "boundary"}


def test_csv_reports(audited: dict) -> None:
    work = audited["tmp"] / "work"
    write_csv(audited["results"], work / "report.csv", NAMES)
    write_regions_csv(audited["results"], work / "regions.csv", NAMES)
    rows = list(csv.DictReader(open(work / "report.csv")))
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"]
    assert [float(r["image_score"]) for r in rows] == sorted((float(r["image_score"]) for r in rows), reverse=True)
    by_id = {r["id"]: r for r in rows}
    assert by_id["c_relabelled"]["wrong_class"] == "1" and by_id["c_relabelled"]["regions"] == "1"
    assert by_id["c_relabelled"]["top_regions"] == "wrong_class box->disc 0.425 @5,5,11,11"
    assert by_id["b_erased"]["top_regions"].startswith("missing background->disc")
    assert by_id["a_clean"]["top_regions"] == "" and by_id["d_shifted"]["fold"] == "1"
    regions = list(csv.DictReader(open(work / "regions.csv")))
    assert sorted(r["type"] for r in regions) == ["boundary", "missing", "wrong_class"]
    assert not list(work.glob(".tmp-*"))


def test_html_is_self_contained(audited: dict) -> None:
    path = audited["tmp"] / "work" / "report.html"
    write_html(audited["results"], audited["adapter"], audited["items"], audited["oof"], P, path, top=3)
    page = path.read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == 3 * 4  # image, given mask, prediction, suspicion for the top 3
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert "http" not in page.replace("http-equiv", "")  # nothing to fetch: opens offline
    png = cv2.imdecode(np.frombuffer(base64.b64decode(images[3].split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    assert png.shape[:2] == (20, 20) and png.max() > 0  # the suspicion heat map of the first image
    assert page.index(audited["results"][0].id) < page.index(audited["results"][2].id)
    assert "a_clean" not in page


def test_suggestions_change_only_flagged_regions(audited: dict) -> None:
    data = audited["data"]
    before = {p.name: p.read_bytes() for p in (data / "lbl").iterdir()}
    out = audited["tmp"] / "suggested"
    count = write_suggestions(audited["results"], audited["adapter"], audited["items"], audited["oof"], P, out, 0.0, str(data))
    assert count == 3 and sorted(p.name for p in out.glob("*.png")) == ["b_erased.png", "c_relabelled.png", "d_shifted.png"]
    truth = square(5, 11, 5, 11)
    for name in ("b_erased", "c_relabelled", "d_shifted"):
        mask = cv2.imread(str(out / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert mask[19, 19] == 255  # "don't care" keeps the adapter's ignore value
        mask[19, 19] = 0
        np.testing.assert_array_equal(mask, truth)  # only the flagged pixels moved, to the prediction
    assert {p.name: p.read_bytes() for p in (data / "lbl").iterdir()} == before  # originals untouched
    rows = list(csv.DictReader(open(out / "suggestions.csv")))
    assert {r["id"]: int(r["changed_pixels"]) for r in rows} == {"b_erased": 36, "c_relabelled": 36, "d_shifted": 24}


def test_suggestions_never_go_into_the_data_folder(audited: dict) -> None:
    for target in (audited["data"] / "suggested", audited["data"] / "lbl"):
        with pytest.raises(SegsslError, match="must not be inside"):
            write_suggestions(audited["results"], audited["adapter"], audited["items"], audited["oof"], P, target, 0.0,
                              str(audited["data"]))
    assert not (audited["data"] / "suggested").exists()


def test_missing_cleanlab_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cleanlab", None)  # import cleanlab -> ImportError
    with pytest.raises(SegsslError, match=re.escape("pip install 'segssl[audit]'")):
        require_cleanlab()


def test_segssl_imports_without_cleanlab() -> None:
    code = ("import sys; sys.modules['cleanlab'] = None\n"
            "import segssl, segssl.audit.scoring, segssl.audit.noise, segssl.audit.cleanlab_scores, segssl.cli.audit\n"
            "from segssl.audit.scoring import audit_image")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_cleanlab_scores_side_by_side(audited: dict) -> None:
    pytest.importorskip("cleanlab")
    results = audited["results"]
    issues = add_cleanlab(results, audited["adapter"], audited["items"], audited["oof"], audited["tmp"])
    softmin = {r.id: r.extra["cleanlab_softmin"] for r in results}
    assert all(softmin["a_clean"] > softmin[k] for k in ("b_erased", "c_relabelled", "d_shifted"))  # lower = worse
    assert [i.shape for i in issues] == [(20, 20)] * 4
    assert not list(audited["tmp"].glob(".cleanlab-*"))  # the memory-mapped stack is removed
