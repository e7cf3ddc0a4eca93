"""``invaspread serve INDEX`` (issue 29, 4), end to end in a real browser: headless Chromium (Debian's
``chromium``) driven by Playwright clicks an image and uploads one, and the page's DOM must show what
``SearchIndex.search`` answers; the server refuses any path outside the index (404), symlinks out of it included."""

import os
import shutil
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

from conftest import noise_image
from invaspread.cli import main
from invaspread.search import SearchIndex

flask = pytest.importorskip("flask")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
K = 4


@pytest.fixture()
def served(tiny_run, tmp_path):
    """(base URL, index folder, image folder, outside file) of a server in a thread over a 10-image index."""
    from werkzeug.serving import make_server

    from invaspread.search.serve import create_app

    images = tmp_path / "photos"
    images.mkdir()
    for i in range(10):
        noise_image(i).save(images / f"{i:02d}.png")
    outside = tmp_path / "secret.png"
    noise_image(99).save(outside)
    os.symlink(outside, images / "10-link-out.png")            # indexed, but its file lies outside the folder
    index = tmp_path / "p.index"
    assert main(["index", str(tiny_run), "--images", str(images), "--out", str(index), "--backend", "torch"]) == 0
    server = make_server("127.0.0.1", 0, create_app(index, k=K), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", index, images, outside
    server.shutdown()


def status(url):
    try:
        with urllib.request.urlopen(url) as reply:
            return reply.status
    except urllib.error.HTTPError as err:
        return err.code


def expected(index_folder, query=None, row=None):
    index = SearchIndex(index_folder)
    queries = index.embed([str(query)]) if query is not None else np.array(index.embeddings[row:row + 1])
    scores, rows = index.search(queries, K + (row is not None))
    return [(index.paths[r], round(float(s), 4)) for s, r in zip(scores[0], rows[0]) if r != row][:K]


def test_only_the_index_own_images_are_served(served):
    base, index_folder, images, outside = served
    paths = SearchIndex(index_folder).paths
    assert status(f"{base}/image/0") == 200 and status(f"{base}/") == 200
    link = paths.index(str(images / "10-link-out.png"))
    for url in (f"{base}/image/{link}", f"{base}/image/{len(paths)}", f"{base}/image/-1",
                f"{base}/image/..%2F..%2Fsecret.png", f"{base}/image/../../secret.png", f"{base}/{outside}",
                f"{base}/image/{outside}", f"{base}/neighbours/{len(paths)}"):
        assert status(url) == 404, url
    with urllib.request.urlopen(f"{base}/image/0") as reply:
        assert reply.read() == (images / "00.png").read_bytes()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_click_and_upload_show_the_neighbours_search_gives(served, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    base, index_folder, images, _ = served
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_FLAGS,
                                             env={**os.environ, "HOME": str(tmp_path)})
        page = browser.new_page()
        page.goto(base + "/")
        page.wait_for_function("[...document.querySelectorAll('#grid img')].length === 11 && "
                               "[...document.querySelectorAll('#grid img')].every(e => e.complete)")
        loaded = page.eval_on_selector_all("#grid img", "els => els.map(e => e.naturalWidth > 0)")
        assert loaded == [True] * 10 + [False]                  # the symlink out of the folder is not served

        page.click("#grid img[data-row='3']")                                    # a click on an indexed image
        page.wait_for_selector("#results[data-done='yes']")
        shown = page.eval_on_selector_all("#results figure.hit", "els => els.map(e => [e.querySelector('img')"
                                                                  ".title, Number(e.dataset.score)])")
        assert [(p, s) for p, s in shown] == expected(index_folder, row=3)

        query = tmp_path / "upload.png"
        noise_image(5).save(query)
        page.set_input_files("#file", str(query))                               # an uploaded image
        page.wait_for_selector("#results[data-done='yes']")
        shown = page.eval_on_selector_all("#results figure.hit", "els => els.map(e => [e.querySelector('img')"
                                                                  ".title, Number(e.dataset.score)])")
        assert [(p, s) for p, s in shown] == expected(index_folder, query=query)
        assert shown[0][0] == str(images / "05.png") and shown[0][1] > 0.999   # its own copy comes first
        if os.environ.get("INVASPREAD_SCREENSHOT"):                              # the README's picture
            page.screenshot(path=os.environ["INVASPREAD_SCREENSHOT"], full_page=True)
        browser.close()
