"""The Gradio UI in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven
with Selenium): upload an image, ask, see the streamed answer and the tool's image; reload the page
and the conversation is still there (it lives in the agent's memory)."""

from __future__ import annotations

import os
import shutil

import pytest
from serve_utils import free_port, paint_tool, png_bytes

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                                reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium "
                                "chromium-driver; .ci/run installs them)")]


@pytest.fixture
def ui_server(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    from ibllm_agent import ChatImageBindLLM
    from ibllm_agent.agent import build_agent
    from ibllm_agent.serve.turns import TurnSettingsMiddleware
    from ibllm_agent.serve.ui import build_ui
    from ibllm_agent.testing import ScriptedGenerator

    gen = ScriptedGenerator([
        "Thought: Do I need to use a tool? Yes\nAction: Paint Picture\nAction Input: a blue sea\n",
        "Thought: Do I need to use a tool? No\nAI: Here is your painted picture.",
    ], chunk_size=2)
    agent = build_agent(ChatImageBindLLM(model=gen), tools=[paint_tool()], memory=f"sqlite:///{tmp_path}/mem.sqlite",
                        workspace=tmp_path / "ws", middleware=[TurnSettingsMiddleware()])
    demo = build_ui(agent)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                        allowed_paths=[str(agent.workspace.root)])
    try:
        yield f"http://127.0.0.1:{port}/", gen
    finally:
        demo.close()
        agent.close()


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_upload_ask_see_answer_and_tool_image_then_reload(ui_server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url, gen = ui_server
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes((64, 48)))
    wait = WebDriverWait(browser, 60)
    browser.get(url)
    upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#upload-image input[type=file]")))
    upload.send_keys(str(photo))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#upload-image img"))  # the preview is shown
    browser.find_element(By.CSS_SELECTOR, "#question textarea").send_keys("Paint this as a sea")
    browser.find_element(By.CSS_SELECTOR, "#send").click()

    chat = (By.CSS_SELECTOR, "#chat")
    wait.until(ec.text_to_be_present_in_element(chat, "Here is your painted picture."))
    text = browser.find_element(*chat).text
    assert "Paint this as a sea" in text and "Paint Picture" in text
    # The uploaded photo and the tool's painting are both shown as images in the conversation.
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#chat img")) >= 2)
    assert len(gen.calls) == 2 and [m.modality for m in gen.calls[0][1]] == ["image"]
    # The page's settings reached the model (default sliders: temperature 0.1, 256 new tokens).
    assert gen.calls[0][2].temperature == pytest.approx(0.1)

    browser.refresh()  # the thread id is in local storage, the messages in the agent's memory
    wait.until(ec.text_to_be_present_in_element(chat, "Here is your painted picture."))
    assert "Paint this as a sea" in browser.find_element(*chat).text
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#chat img")) >= 2)
    if os.environ.get("UI_SCREENSHOT"):
        browser.save_screenshot(os.environ["UI_SCREENSHOT"])
