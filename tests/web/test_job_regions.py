"""The job page and the job API show the engine's per-region figures and the network weights' sha256."""
from __future__ import annotations

from fastapi.testclient import TestClient
from test_web_api import bearer

from node.store.db import Job

SHA = "ab" * 32
REGIONS = {
    "thorax": {"id": 1, "title": "lungs / thorax", "colour": "#4696ff", "share_of_body": 0.3125, "voxels": 900,
               "mean_mm": 6.25, "p95_mm": 11.5, "deformable_mean_mm": 4.75, "deformable_p95_mm": 9.5,
               "folding_percent": 0.0},
    "abdomen": {"id": 2, "title": "abdominal organs", "colour": "#ff9628", "share_of_body": 0.6875, "voxels": 1500,
                "mean_mm": 3.5, "p95_mm": 7.25, "deformable_mean_mm": 2.0, "deformable_p95_mm": 5.5,
                "folding_percent": 0.0125},
}


def _with_regions(db, job_id):
    with db.session() as s:
        job = s.get(Job, job_id)
        job.qc = dict(job.qc, regions=REGIONS, weights={"name": "site.safetensors", "path": "/x/site.safetensors",
                                                         "sha256": SHA, "shipped": False, "source": "node.yaml"})
        s.commit()


def test_job_page_shows_region_table_and_weights(admin, node_db):
    db, ids = node_db
    html = admin.get(f"/jobs/{ids['done']}").text
    assert 'id="region-table"' not in html and SHA not in html          # an older report: no table
    _with_regions(db, ids["done"])
    html = admin.get(f"/jobs/{ids['done']}").text
    table = html[html.index('id="region-table"'):html.index("</table>", html.index('id="region-table"'))]
    for text in ("lungs / thorax", "abdominal organs", "31 %", "69 %", "6.25", "11.5", "4.75 / 9.5", "0.0125",
                 "#4696ff"):
        assert text in table, text
    assert table.index("lungs / thorax") < table.index("abdominal organs")   # region order
    assert SHA in html and "site.safetensors" in html and "chosen by node.yaml" in html
    assert "region weights" in html                                          # the QC picture's caption


def test_job_api_detail_has_regions_and_weights(app, tokens, node_db):
    db, ids = node_db
    _with_regions(db, ids["done"])
    with TestClient(app) as c:
        j = c.get(f"/api/jobs/{ids['done']}", headers=bearer(tokens["viewer"])).json()
    assert [r["name"] for r in j["regions"]] == ["thorax", "abdomen"]
    assert j["regions"][0]["p95_mm"] == 11.5 and j["weights"]["sha256"] == SHA
