"""`clipkit serve` in a real browser: Debian's chromium driven by Selenium through Debian's chromedriver.

The server runs on a free loopback port over the tiny world of test_serve.py (a real uvicorn,
in a thread). The test types a query, checks every hit image loaded, clicks a hit for its
neighbours, uploads an image (search + zero-shot), runs an expression, generates with the tiny
pipeline, shows an error, and saves a laptop and a phone-width screenshot under its tmp dir.
Set CLIPKIT_SERVE_SCREENSHOTS=DIR to also copy the two PNGs there.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
]

os.environ.setdefault("SE_OFFLINE", "true")  # Selenium must never try to download a driver or browser
os.environ.setdefault("SE_AVOID_STATS", "true")
pytest.importorskip("fastapi")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
    pytest.skip(
        f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}): "
        f"apt-get install chromium chromium-driver",
        allow_module_level=True,
    )

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from test_serve import ITEMS, build_world, load_engine  # noqa: E402

from clipkit.retrieval.embeddings.reader import EmbeddingFolder  # noqa: E402
from clipkit.serve import bind_socket, create_app, make_server  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(url, engine, world, uvicorn server) of a uvicorn server in a thread on a free 127.0.0.1 port."""
    world = build_world(tmp_path_factory.mktemp("serve-browser"))
    engine = load_engine(world)
    engine.warmup()
    sock = bind_socket("127.0.0.1", 0)
    uv = make_server(create_app(engine))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not uv.started and time.time() < deadline:
        time.sleep(0.05)
    assert uv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", engine, world, uv
    uv.should_exit = True
    thread.join(15)
    engine.close()
    sock.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}", "--window-size=1280,860"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def api(url: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(url + path, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def wait(driver, condition, timeout: float = 30, message: str = ""):
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d), message)


def shown_ids(driver) -> list[int]:
    return [int(e.get_attribute("data-id")) for e in driver.find_elements(By.CSS_SELECTOR, "#grid button.hit")]


def images_loaded(driver, selector: str) -> list:
    """[naturalWidth] of the images under selector once all have finished loading (None while any is loading)."""
    return driver.execute_script(
        "const imgs = [...document.querySelectorAll(arguments[0])];"
        "return imgs.every(i => i.complete) ? imgs.map(i => i.naturalWidth) : null;",
        selector,
    )


def test_the_page_works_in_chromium(server, browser, tmp_path):
    url, engine, world, uv = server
    d = browser
    d.get(url + "/")
    wait(d, lambda d: f"{ITEMS} items" in d.find_element(By.ID, "stats").text, message="index info never shown")
    assert d.find_elements(By.CSS_SELECTOR, "#filters select"), "no metadata filters offered"

    # 1. a text query: the hits are the API's, and every hit image loads
    d.find_element(By.ID, "q").send_keys("a red circle wearing a hat")
    d.find_element(By.CSS_SELECTOR, "#search-form button").click()
    wait(d, lambda d: len(shown_ids(d)) == 24, message="text results never shown")
    expected = api(url, "/search", {"text": "a red circle wearing a hat", "k": 24})["results"]
    assert shown_ids(d) == [h["id"] for h in expected]
    widths = wait(d, lambda d: images_loaded(d, "#grid img"), message="hit images never finished loading")
    assert len(widths) == 24 and all(w > 0 for w in widths), widths

    # 2. click a hit: its neighbours, with the item itself shown as the query
    clicked = shown_ids(d)[1]
    d.find_elements(By.CSS_SELECTOR, "#grid button.hit")[1].click()
    wait(d, lambda d: d.find_element(By.ID, "result-title").text == f"More like #{clicked}", message="no neighbours")
    wait(d, lambda d: shown_ids(d) == [h["id"] for h in api(url, "/search", {"id": clicked, "k": 24})["results"]])
    assert d.find_element(By.CSS_SELECTOR, "#grid .hit.query").get_attribute("data-id") == str(clicked)
    d.save_screenshot(str(tmp_path / "serve-more-like.png"))

    # 3. upload an image: it finds itself first; zero-shot classifies it
    vectors = EmbeddingFolder(world["emb"]).load("img")
    similar = vectors @ vectors.T - 2 * np.eye(ITEMS)
    item = int(np.flatnonzero(similar.max(axis=1) < 0.999)[0])  # an image with no identical twin
    upload = tmp_path / f"item-{item}.png"
    upload.write_bytes(urllib.request.urlopen(f"{url}/image/{item}", timeout=10).read())
    d.find_element(By.ID, "file").send_keys(str(upload))
    wait(d, lambda d: d.find_element(By.ID, "result-title").text.startswith(f"Like {upload.name}"), message="no upload")
    wait(d, lambda d: shown_ids(d)[:1] == [item], message=f"item {item} is not its own nearest neighbour")
    d.find_element(By.ID, "classes").send_keys("circle, square, star")
    d.find_element(By.CSS_SELECTOR, "#zs-form button").click()
    wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#zs-result .bar")) == 3, message="no zero-shot bars")

    # 4. an expression: results and nearest words
    expr = d.find_element(By.ID, "expr")
    expr.clear()
    expr.send_keys('text:"a blue star" + 0.8 * text:"a hat"')
    d.find_element(By.CSS_SELECTOR, "#expr-form button[type=submit]").click()
    wait(d, lambda d: d.find_element(By.ID, "result-title").text.startswith('text:"a blue star"'))
    wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#words .chip")) == 5, message="no nearest words")

    # 5. generate with the tiny pipeline
    d.find_element(By.ID, "prompt").send_keys("a green heart wearing a hat")
    for field, value in (("steps", "3"), ("num", "3")):
        box = d.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    d.find_element(By.CSS_SELECTOR, "#gen-form button[type=submit]").click()
    widths = wait(
        d,
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#generated img")) == 3 and images_loaded(d, "#generated img"),
        timeout=60,
        message="no generated images",
    )
    assert widths == [32, 32, 32]

    # 6. a bad expression: a readable error, and the page keeps working
    expr.clear()
    expr.send_keys('text:"a" +')
    d.find_element(By.CSS_SELECTOR, "#expr-form button[type=submit]").click()
    wait(d, lambda d: d.find_element(By.ID, "error").is_displayed(), message="no error shown")
    assert "position" in d.find_element(By.ID, "error").text
    q = d.find_element(By.ID, "q")
    q.clear()
    q.send_keys("a purple square")
    d.find_element(By.CSS_SELECTOR, "#search-form button").click()
    wait(
        d,
        lambda d: (
            not d.find_element(By.ID, "error").is_displayed()
            and d.find_element(By.ID, "result-title").text == "“a purple square”"
        ),
    )

    # Chromium keeps its connections alive (a few sockets carried every request of the page), and each
    # accepted socket sends small writes at once: no 40 ms delayed-ACK stall per kept-alive request.
    connections = [c.transport.get_extra_info("socket") for c in uv.server_state.connections]
    assert 0 < len(connections) <= 6 and uv.server_state.total_requests >= 5 * len(connections)
    assert all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1 for s in connections)

    # screenshots: laptop and phone width (looked at by a person when the page changes)
    d.execute_script("window.scrollTo(0, 0)")
    d.save_screenshot(str(tmp_path / "serve.png"))
    d.set_window_size(390, 844)
    wait(d, lambda d: d.execute_script("return window.innerWidth") <= 400)
    assert d.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1"), (
        "the page scrolls sideways at phone width"
    )
    d.save_screenshot(str(tmp_path / "serve-phone.png"))
    d.set_window_size(1280, 860)
    for name in ("serve.png", "serve-phone.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    if os.environ.get("CLIPKIT_SERVE_SCREENSHOTS"):
        out = Path(os.environ["CLIPKIT_SERVE_SCREENSHOTS"])
        out.mkdir(parents=True, exist_ok=True)
        for name in ("serve.png", "serve-phone.png", "serve-more-like.png"):
            shutil.copy(tmp_path / name, out / name)
