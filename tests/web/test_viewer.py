"""The job page's viewer in a real headless Chromium (Debian chromium driven by Playwright, WebGL2 by SwiftShader):
a finished job with real result files (tests/web/viewer_job.py) opens with the current scan and the registered prior
side by side; scrolling moves both (linked); the Jacobian overlay paints the fold red; window presets and the blend
change the pixels. Saves docs/img/viewer.png and docs/img/viewer_overlay.png (shown in the README)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from conftest import ADMIN_PASSWORD
from test_web_browser import page, server  # noqa: F401 - the Chromium page and uvicorn fixtures
from viewer_job import make_viewer_job

pytestmark = pytest.mark.browser
IMG = Path(__file__).resolve().parents[2] / "docs" / "img"


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _red(px: np.ndarray) -> int:
    """Pixels painted by the Jacobian overlay's folding colour (pure red over grey CT)."""
    r, g, b = px[..., 0], px[..., 1], px[..., 2]
    return int(((r > 150) & (r - g > 100) & (r - b > 100)).sum())


def _crosshair(page, which: str) -> list[float]:  # noqa: F811
    return page.evaluate(f"() => Array.from(window.totalregViewer.{which}.scene.crosshairPos)")


def _settle(page) -> None:  # noqa: F811
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    page.wait_for_timeout(300)


def test_viewer_scroll_overlay_blend(server, page, node_db, tmp_path):  # noqa: F811 - fixtures imported above
    db, ids = node_db
    page.set_default_timeout(60_000)  # SwiftShader renders WebGL on the CPU
    page.errors = errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    make_viewer_job(db, ids["done"], tmp_path / "viewerjob", spacing_mm=3.0)
    IMG.mkdir(parents=True, exist_ok=True)
    page.goto(server + "/login")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", ADMIN_PASSWORD)
    page.click("button[type=submit]:has-text('Sign in')")
    page.wait_for_url(server + "/")
    page.goto(f"{server}/jobs/{ids['done']}")
    page.wait_for_selector("#viewer[data-ready='1']")
    assert page.errors == []
    assert page.evaluate("window.totalregViewer.current.volumes.length") == 3  # current + |d| + Jacobian
    assert page.evaluate("window.totalregViewer.prior.volumes.length") == 4  # prior + current (blend) + 2
    cur, prior = page.locator("#nv-current"), page.locator("#nv-prior")
    page.locator("#viewer").scroll_into_view_if_needed()
    _settle(page)
    before = _pixels(cur.screenshot())
    assert before.std() > 10  # a CT is drawn, not a blank canvas

    # scroll over the first plane of the current scan: the slice moves in both panes (linked)
    pos0 = _crosshair(page, "current")
    box = cur.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.25)
    for _ in range(6):
        page.mouse.wheel(0, 120)
        page.wait_for_timeout(60)
    _settle(page)
    pos1 = _crosshair(page, "current")
    assert pos1 != pos0
    assert np.allclose(_crosshair(page, "prior"), pos1, atol=1e-6)
    scrolled = _pixels(cur.screenshot())
    assert np.abs(scrolled - before).mean() > 0.5
    assert _red(scrolled) == 0
    page.locator("#viewer").screenshot(path=str(IMG / "viewer.png"))

    # put the crosshair on the fold and show the Jacobian overlay: red appears, only there
    page.evaluate("""() => { const v = window.totalregViewer, nv = v.current;
        const mm = [-40, -10, 30];  /* RAS of the fold at LPS (40, 10, 30) */
        const frac = nv.mm2frac(mm); nv.scene.crosshairPos = frac; nv.drawScene(); nv.createOnLocationChange(); }""")
    _settle(page)
    on_fold = _pixels(cur.screenshot())
    assert _red(on_fold) == 0
    page.check("input[name=viewer-overlay][value=jacobian]")
    _settle(page)
    jac = _pixels(cur.screenshot())
    assert _red(jac) > 30
    assert _red(_pixels(prior.screenshot())) > 30  # the same overlay on the registered prior
    changed = (np.abs(jac - on_fold).sum(-1) > 30).mean()
    assert changed < 0.05  # only around the fold: the ordinary range (0.5 < det < 2) stays transparent
    assert "folding" in page.inner_text("#viewer-legend")
    page.locator("#viewer").screenshot(path=str(IMG / "viewer_overlay.png"))
    page.check("input[name=viewer-overlay][value=displacement]")
    _settle(page)
    disp = _pixels(cur.screenshot())
    assert _red(disp) < _red(jac) and np.abs(disp - jac).mean() > 0.5
    page.check("input[name=viewer-overlay][value=none]")
    _settle(page)
    assert np.abs(_pixels(cur.screenshot()) - on_fold).mean() < 0.5  # overlay off: back to the plain CT

    # window presets and the blend change what is drawn
    page.click("button[data-preset=lung]")
    _settle(page)
    assert np.abs(_pixels(cur.screenshot()) - on_fold).mean() > 1.0
    p0 = _pixels(prior.screenshot())
    assert p0.std() > 10 and _red(p0) == 0
    page.locator("#viewer-blend").fill("100")
    _settle(page)
    assert page.evaluate("window.totalregViewer.prior.volumes[1].opacity") == 1
    assert np.abs(_pixels(prior.screenshot()) - p0).mean() > 0.5
    page.click("#viewer-flicker")  # flicker: the current scan on the prior pane on, off, on ...
    seen = set()
    for _ in range(10):
        seen.add(page.evaluate("window.totalregViewer.prior.volumes[1].opacity"))
        page.wait_for_timeout(150)
    assert seen == {0, 1}
    page.click("#viewer-flicker")
    assert page.get_attribute("#viewer-flicker", "aria-pressed") == "false"
    assert page.errors == []
