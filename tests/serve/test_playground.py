"""The web playground at `/`, driven in headless Chromium: type a message, click Send, watch the
answer stream in, no console errors; the screenshot is kept under the test's tmp dir."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from cdp import Browser
from serve_helpers import API_KEY, CONTEXT, MODEL, http

ANSWER_TOKENS = 24


@pytest.fixture()
def browser(tmp_path):
    b = Browser(tmp_path / "profile")
    yield b
    b.close()


def test_page_and_assets_are_public_but_the_api_is_not(server):
    with urllib.request.urlopen(server.url + "/") as r:
        page = r.read().decode()
        assert r.headers["content-type"].startswith("text/html")
    assert "/playground/app.js" in page and "http" not in page.replace("http-equiv", "")
    for name, kind in (("app.js", "javascript"), ("style.css", "css")):
        with urllib.request.urlopen(f"{server.url}/playground/{name}") as r:
            assert kind in r.headers["content-type"] and r.read()
    status, body = http(server.url + "/playground/info", key=None)
    assert (status, body) == (200, {"model": MODEL, "context_length": CONTEXT, "needs_key": True})
    status, body = http(server.url + "/v1/models", key=None)
    assert status == 401
    status, body = http(server.url + "/playground/report", key=None)
    assert status == 401
    status, body = http(server.url + "/playground/nothing.js", key=None)
    assert status == 401  # only the named assets are public


def test_report_card_of_a_dir_without_a_run_is_a_clear_404(server):
    status, body = http(server.url + "/playground/report")
    assert status == 404 and "lmforge report" in body["error"]["message"]


def test_chat_in_headless_chromium(server, client, browser, tmp_path, monkeypatch):
    model = server.engine.batcher.model
    step = model.step

    def slowed(*args, **kwargs):  # the answer streams over ~1 s, so it cannot arrive at once
        time.sleep(0.04)
        return step(*args, **kwargs)

    monkeypatch.setattr(model, "step", slowed)
    browser.goto(server.url + "/")
    assert "API key" in browser.js("document.body.innerText")
    browser.wait_for("document.getElementById('model').textContent.includes('needs its API key')")
    browser.type("#api_key", API_KEY)
    browser.js("document.getElementById('api_key').dispatchEvent(new Event('change'))")
    browser.wait_for("!document.getElementById('model').textContent.includes('needs')")
    # greedy and a fixed length, so the page's answer can be checked against the API's
    browser.js(
        "document.getElementById('temperature').value = '0';"
        "document.getElementById('temperature').dispatchEvent(new Event('input'));"
        f"document.getElementById('max_tokens').value = '{ANSWER_TOKENS}';"
        # count how often the answer bubble changes: a streamed answer grows in steps
        "window.updates = 0; new MutationObserver(() => { window.updates += 1; })"
        ".observe(document.getElementById('messages'),"
        " {subtree: true, childList: true, characterData: true});"
    )
    browser.type("#input", "Hello, fox!")
    browser.click("#send")
    browser.wait_for("document.querySelector('.msg.assistant .meta') !== null", timeout=60)
    shot = browser.screenshot(tmp_path / "playground.png")
    print(f"playground screenshot: {shot}")

    answer = browser.js("document.querySelector('.msg.assistant').firstChild.textContent")
    meta = browser.js("document.querySelector('.msg.assistant .meta').textContent")
    reference = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello, fox!"}],
        temperature=0,
        max_tokens=ANSWER_TOKENS,
    )
    assert answer == reference.choices[0].message.content and answer
    assert f"{ANSWER_TOKENS} tokens" in meta and "tokens/s" in meta and "first token" in meta
    assert browser.js("window.updates") > 3, "the answer arrived in one piece, not streamed"
    assert browser.js("document.querySelectorAll('.msg.user').length") == 1
    # the sampling settings the server takes beyond OpenAI's reach the request as typed
    body = browser.js(
        "document.getElementById('top_k').value = '5';"
        "document.getElementById('min_p').value = '0.1';"
        "document.getElementById('repetition_penalty').value = '1.3';"
        "JSON.stringify(request())"
    )
    sent = json.loads(body)
    assert (sent["top_k"], sent["min_p"], sent["repetition_penalty"]) == (5, 0.1, 1.3)
    assert browser.errors == []
    assert shot.stat().st_size > 5000

    # the report card tab replaces the chat; this model dir holds no run, and says so
    browser.click("#tab-report")
    note = browser.wait_for(
        "document.getElementById('report-note').textContent.includes('lmforge')"
    )
    assert note is True
    assert browser.js("getComputedStyle(document.getElementById('chat-view')).display") == "none"
    browser.click("#tab-chat")
    assert browser.js("getComputedStyle(document.getElementById('report-view')).display") == "none"
