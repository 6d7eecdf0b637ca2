"""The dashboard's disk tile (issue 18): disk use, its trend and the next purge, from the retention status file."""
from __future__ import annotations

import re

from node.retention.runner import Retention


def test_dashboard_shows_disk_use_trend_and_next_purge(app, admin, node_cfg, node_db):
    assert 'id="retention"' not in admin.get("/").text  # before the first purge pass: no tile
    node_cfg.retention.max_bytes = 10 ** 9
    r = Retention(node_cfg, node_db[0], tick_s=60)
    r.tick()
    r.tick()
    html = admin.get("/").text
    tile = html[html.index('id="retention"'):]
    tile = tile[:tile.index("</svg>") + 600]
    assert "purge above 858.3 MB, down to 762.9 MB" in tile  # 90 % / 80 % of 1e9 bytes
    pts = re.search(r'<polyline [^>]*points="([^"]+)"', tile).group(1).split()
    assert len(pts) == 2 and pts[0].startswith("0,") and pts[1].startswith("120,")
    assert "next purge " + r.samples[-1][0][:10] in tile and "trend" in tile
