"""`unclip-jax serve`: the web demo's form → CLI mapping, its error lines, the files it offers,
and one end-to-end run in a real headless browser (Debian's chromium through Selenium)."""
import hashlib
import io as _io
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from pipeline_fixtures import CAPTIONS, checkpoints, read_png, smooth_image
from subprocess_env import one_device_env, without_simulated_devices
from unclip_jax import cli
from unclip_jax.serve import server as serve, session as serve_session
from unclip_jax.cli import _sampling
from unclip_jax.errors import UserError
from unclip_jax.sample.checks import check_prompts
from unclip_jax.sample.images import load_image, to_uint8
from unclip_jax.sample.loading import BUNDLED_MODEL
from unclip_jax.sample.records import regenerate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_without_simulated_devices():
    assert without_simulated_devices(
        "--xla_dump_to=d --xla_force_host_platform_device_count=8 --x=1") == "--xla_dump_to=d --x=1"
    assert without_simulated_devices("") == ""


def _cli_settings(argv):
    """The settings `unclip-jax ARGV` records, through the CLI's own parser."""
    args = cli.build_parser(load=argv[0]).parse_args(argv)
    return _sampling.settings(args, argv[0])


@pytest.mark.parametrize("command, form, argv", [
    ("sample", dict(num_images_per_prompt=3, prior_steps="5", prior_guidance=2.0,
                    decoder_steps="ddim4", upsampler_steps="ddim2/ddim3", eta=0.5, prior="ar"),
     ["sample", "x", "-n", "3", "--prior-steps", "5", "--prior-guidance", "2",
      "--decoder-steps", "ddim4", "--upsampler-steps", "ddim2/ddim3", "--eta", "0.5",
      "--prior", "ar"]),
    ("sample", dict(), ["sample", "x"]),
    ("vary", dict(n=2, decoder_guidance=1.5), ["vary", "a.png", "-n", "2",
                                               "--decoder-guidance", "1.5"]),
    ("interpolate", dict(n=7, fixed_xT=True), ["interpolate", "a", "b", "-n", "7",
                                               "--fixed-xT"]),
    ("textdiff", dict(max_angle=0.25, caption_from="a", caption_to="b"),
     ["textdiff", "i", "--from", "a", "--to", "b", "--max-angle", "0.25"]),
    ("inpaint", dict(prompt="p", negative="q", feather=1.5, jump_length=2, resamplings=3, n=2,
                     prior_steps="4"),
     ["inpaint", "i.png", "p", "--mask", "m.png", "--negative", "q", "--feather", "1.5",
      "--jump-length", "2", "--resamplings", "3", "-n", "2", "--prior-steps", "4"]),
    ("img2img", dict(prompt="p", strength=0.3), ["img2img", "i.png", "p", "--strength", "0.3"]),
    ("mix", dict(weights=[1.0, 2.0], eta=0.2), ["mix", "a.png", "b", "--weights", "1", "2",
                                                 "--eta", "0.2"]),
])
def test_form_values_record_the_settings_the_cli_records(command, form, argv):
    """A form filled like a command line records exactly that command line's settings."""
    ns = serve_session.cli_args(command, **form)
    assert _sampling.settings(ns, command) == _cli_settings(argv)


def test_form_field_parsing():
    assert serve_session.prompts_from_text(" a red circle \n\n  a blue square\n") == \
        ["a red circle", "a blue square"]
    assert serve_session.prompts_from_text("") == []
    assert serve_session.text_or_none("  ") is None and serve_session.text_or_none(" 25 ") == "25"
    assert serve_session.whole_number("seed", None, default=0) == 0
    assert serve_session.whole_number("seed", 2 ** 70) == 2 ** 70      # range: check_seed's job
    with pytest.raises(UserError, match="frames 2.5 is not a whole number"):
        serve_session.whole_number("frames", 2.5)
    with pytest.raises(UserError, match="no image uploaded"):
        serve_session.uploaded("image", None)
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))               # transparent → white
    assert np.all(serve_session.pixels(serve_session.uploaded("image", rgba)) == 255)
    with pytest.raises(TypeError):
        serve_session.cli_args("sample", no_such_field=1)


def test_drawn_mask_and_weights():
    """Painted pixels (any alpha > 0 in any layer) are white, the rest black, at the image's
    size; an untouched canvas is no mask."""
    a = np.zeros((4, 6, 4), np.uint8)
    a[1, 2, 3] = 10
    b = np.zeros((4, 6, 4), np.uint8)
    b[3, 5] = (255, 0, 255, 255)
    mask = np.asarray(serve_session.drawn_mask([a, b], (6, 4)))
    want = np.zeros((4, 6), np.uint8)
    want[1, 2] = want[3, 5] = 255
    np.testing.assert_array_equal(mask, want)
    big = np.asarray(serve_session.drawn_mask([np.repeat(np.repeat(b, 2, 0), 2, 1)], (6, 4)))
    np.testing.assert_array_equal(big, np.where(np.arange(6)[None] == 5, 255, 0)
                                  * (np.arange(4)[:, None] == 3))
    assert serve_session.drawn_mask([np.zeros((4, 6, 4), np.uint8)], (6, 4)) is None
    assert serve_session.drawn_mask(None, (6, 4)) is None
    assert serve_session.weight_list(" 1, 2 3 ") == [1.0, 2.0, 3.0]
    assert serve_session.weight_list("") is None
    with pytest.raises(UserError, match="weights 'a b' must be numbers"):
        serve_session.weight_list("a b")


def test_page_shows_the_cli_error_line(capsys):
    """A user mistake reaches the page as the line the CLI prints; a bug as its type."""
    from unclip_jax.serve import app as serve_app
    assert cli.main(["sample", "--out", "never.png"]) == 2
    cli_line = capsys.readouterr().err.strip()
    grid, files, status = serve_app.respond(
        lambda: check_prompts(serve_session.prompts_from_text("  \n")))
    assert (grid, files) == (None, None) and status == cli_line
    assert status.startswith("unclip-jax: error: no prompts given")
    _, _, status = serve_app.respond(lambda: {}["missing"])
    assert status.startswith("unclip-jax: internal error (KeyError")
    assert not os.path.exists("never.png")


def test_unreadable_upload_shows_the_cli_error_line(tmp_path):
    """Gradio decodes an upload before the tab runs; an unreadable one shows the line the CLI
    prints for that file (named as uploaded, not by the server's copy)."""
    import gradio as gr
    from gradio.data_classes import FileData
    from unclip_jax.serve import app as serve_app
    bad = tmp_path / "copy-on-the-server.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(UserError) as cli_error:
        load_image(str(bad), 8)
    image = serve_app.readable(gr.Image(type="pil", image_mode=None))
    with pytest.raises(gr.Error) as page_error:
        image.preprocess(FileData(path=str(bad), orig_name="mine.png"))
    assert page_error.value.message == cli.error_line(cli_error.value).replace(str(bad),
                                                                               "mine.png")
    ok = tmp_path / "ok.png"
    Image.new("RGBA", (3, 2), (1, 2, 3, 4)).save(ok)
    assert image.preprocess(FileData(path=str(ok), orig_name="ok.png")).mode == "RGBA"


def test_serve_arguments_and_missing_gradio(monkeypatch, capsys):
    assert cli.main(["serve", "--port", "70000"]) == 2
    assert "--port 70000: a port is a number from 0 to 65535" in capsys.readouterr().err
    args = cli.build_parser(load="serve").parse_args(["serve"])
    assert (args.host, args.port, args.checkpoint) == ("127.0.0.1", 7860, None)
    monkeypatch.setitem(sys.modules, "gradio", None)                 # as if not installed
    assert cli.main(["serve"]) == 2
    assert 'pip install -e ".[demo]"' in capsys.readouterr().err


# ---------------------------------------------------------------------- with a model

@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return checkpoints(tmp_path_factory)


FAST = dict(decoder_steps="ddim2", upsampler_steps="ddim1")


@pytest.mark.slow
def test_uploads_regenerate_from_the_downloads(dirs, tmp_path, monkeypatch):
    """Variations, interpolation and text diff of in-memory uploads: the files offered for
    download (grid, sidecar, the inputs as PNG) regenerate the same grid through
    `unclip-jax sample --from-sidecar` run in the folder they were saved to."""
    session = serve_session.Session(dirs["root"], compile_cache=False)
    try:
        a = Image.fromarray(to_uint8(smooth_image(0, 12)))
        b = Image.fromarray(to_uint8(smooth_image(1, 10))).convert("RGBA")
        layer = np.zeros((12, 12, 4), np.uint8)
        layer[2:7, 3:9] = (255, 0, 255, 255)                    # a stroke of the brush
        mask = serve_session.drawn_mask([layer], a.size)
        results = [session.variations(a, 2, 5, **FAST),
                   session.interpolate(a, b, 3, 5, **FAST),
                   session.text_diff(b, CAPTIONS[0], CAPTIONS[1], 2, 0.3, 5, **FAST),
                   session.inpaint(a, mask, CAPTIONS[2], 2, 5, prior_steps="2", **FAST),
                   session.img2img(b, CAPTIONS[3], 0.5, 1, 5, negative=CAPTIONS[0],
                                   prior_steps="2", **FAST),
                   session.mix([a, None, b], CAPTIONS[4], "1 2 1", 1, 5, prior_steps="2",
                               **FAST)]
        for r in results:
            down = tmp_path / os.path.basename(r.directory)
            down.mkdir()
            for f in r.files:
                shutil.copy(f, down)
            side = json.load(open(r.files[1]))
            assert side["output"] == os.path.basename(r.files[0])
            assert not any(os.path.isabs(v) for v in side["inputs"].values()
                           if isinstance(v, str))
            assert all(os.path.isfile(down / f) for f in side["inputs"].get("items", [])
                       if f.endswith(".png"))
            uploads = [os.path.basename(f) for f in r.files[2:]]          # the input PNGs
            assert uploads and side["input_sha256"] == {
                f: hashlib.sha256((down / f).read_bytes()).hexdigest() for f in uploads}
            monkeypatch.chdir(down)
            regen = regenerate(os.path.basename(r.files[1]), "regen.png")
            np.testing.assert_array_equal(read_png(regen), read_png(r.files[0]))
            np.testing.assert_array_equal(np.asarray(r.grid), read_png(r.files[0]))
        n, h = results[1].images.shape[:2]
        assert read_png(results[1].files[0]).shape == (h + 4, n * (h + 2) + 2, 3)  # a row
    finally:
        session.close()


@pytest.mark.slow
def test_both_priors_share_one_load_and_regenerate(dirs, tmp_path, monkeypatch):
    """A model with prior/ and ar_prior/: both choices are offered, the AR one reuses the
    loaded CLIP/decoder/upsamplers (the same objects), each result regenerates through the
    CLI with its prior, and a repeated request of the same shape compiles nothing new. With
    `default_prior` 'ar' in its MANIFEST the AR prior is offered first."""
    from unclip_jax.sample import programs
    root = tmp_path / "model"
    root.mkdir()
    for name in ("clip", "tokenizer", "prior", "decoder", "upsampler1", "upsampler2"):
        os.symlink(dirs[name], root / name)
    os.symlink(dirs["ar_prior"], root / "ar_prior")
    session = serve_session.Session(str(root), compile_cache=False)
    try:
        assert session.priors == ["diffusion", "ar"]
        assert session.pipes["ar"].stages["decoder"] is session.pipes["diffusion"].stages[
            "decoder"]
        monkeypatch.chdir(tmp_path)
        for prior in session.priors:
            r = session.generate(CAPTIONS[0], 1, 4, prior, prior_steps="2", **FAST)
            assert json.load(open(r.files[1]))["prior"] == prior
            regen = regenerate(r.files[1], str(tmp_path / f"{prior}.png"))
            np.testing.assert_array_equal(read_png(regen), read_png(r.files[0]))
        compiled = len(programs.PROGRAMS)
        session.generate(CAPTIONS[1], 1, 9, "ar", prior_steps="2", **FAST)
        assert len(programs.PROGRAMS) == compiled
        with pytest.raises(UserError, match="prior 'text' is not in this model"):
            session.generate(CAPTIONS[0], 1, 0, "text")
    finally:
        session.close()
    assert not os.path.exists(session.workdir)
    # a MANIFEST naming the AR prior as the default: it is loaded first and offered first
    (root / "MANIFEST.json").write_text(json.dumps({"stages": {}, "default_prior": "ar"}))
    session = serve_session.Session(str(root), compile_cache=False)
    try:
        assert session.priors == ["ar", "diffusion"] and "ar_prior" in session.base.stages
    finally:
        session.close()


# ---------------------------------------------------------------------- in a browser

def _browser():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path, shutil.which("chromedriver")
    return None, None


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def _png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(_io.BytesIO(data)).convert("RGB"), np.uint8)


def _final_size(root: str) -> int:
    """The image size of a model directory's last stage (from its config.json)."""
    for stage in ("upsampler2", "upsampler1", "decoder"):
        path = os.path.join(root, stage, "config.json")
        if os.path.isfile(path):
            return int(json.load(open(path))["model"]["image_size"])
    raise AssertionError(f"{root} has no decoder")


@pytest.mark.slow
def test_browser_generate_download_regenerate_and_error(dirs, tmp_path):
    """Start `unclip-jax serve` on the tiny model, type a prompt in headless chromium, press
    Generate: an image of the model's size appears (with per-stage progress while it runs),
    its downloaded sidecar regenerates the same pixels through the CLI; an empty prompt shows
    the CLI's error line in the page and the server still generates afterwards; a file path
    sent to the server is refused. UNCLIP_JAX_SERVE_SCREENSHOT=FILE also saves the page."""
    browser, driver_path = _browser()
    if browser is None or driver_path is None:
        if os.environ.get("UNCLIP_JAX_REQUIRE_BROWSER"):           # .ci/run: never skip
            pytest.fail("UNCLIP_JAX_REQUIRE_BROWSER is set but chromium/chromedriver is missing")
        pytest.skip("no chromium/chromedriver installed (apt-get install chromium "
                    "chromium-driver); .ci/run installs them")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    # UNCLIP_JAX_SERVE_CHECKPOINT=bundled (or a model directory) runs it on that model
    model = os.environ.get("UNCLIP_JAX_SERVE_CHECKPOINT") or dirs["root"]
    model_args = [] if model == "bundled" else ["--checkpoint", model]
    size = _final_size(BUNDLED_MODEL if model == "bundled" else model)
    # the server and the regenerating CLI run as a user runs them, on one CPU device (with
    # the suite's 8 simulated devices a 256 px image differs run to run by a few levels)
    env = one_device_env(UNCLIP_JAX_CACHE_DIR=str(tmp_path / "xla"),
                         PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1100,1500"):
        opts.add_argument(flag)
    driver = None
    log = open(tmp_path / "server.log", "w")
    with log, serve.running(model_args, env=env, cwd=tmp_path, log=log,
                            timeout=240) as (server, url):
        try:
            # a path sent by the browser does not open a file of the server's
            for path in (os.path.join(REPO, "setup.py"), str(tmp_path / "server.log")):
                with pytest.raises(urllib.error.HTTPError, match="403"):
                    _fetch(f"{url}gradio_api/file={path}")
            driver = webdriver.Chrome(service=Service(driver_path), options=opts)
            driver.get(url)
            wait = WebDriverWait(driver, 600, poll_frequency=0.5)
            prompt = wait.until(lambda d: d.find_element(By.CSS_SELECTOR,
                                                         "#gen-prompts textarea"))
            status = driver.find_element(By.CSS_SELECTOR, "#gen-status textarea")

            def type_into(box, text: str) -> None:     # as a user: select all, type over it
                box.send_keys(Keys.CONTROL, "a")
                box.send_keys(Keys.DELETE)
                if text:
                    box.send_keys(text)

            def generate(text: str, seed: int | None = None) -> str:
                type_into(prompt, text)
                if seed is not None:
                    type_into(driver.find_element(By.CSS_SELECTOR, "#gen-seed input"), str(seed))
                before = status.get_property("value")
                driver.find_element(By.ID, "gen-run").click()

                def finished(d):
                    for el in d.find_elements(By.CSS_SELECTOR, ".progress-level, .progress-text"):
                        try:
                            progress.append(el.text)
                        except StaleElementReferenceException:
                            pass
                    return (v := status.get_property("value")) != before and v
                return wait.until(finished)

            progress = []                               # the progress texts the page showed
            # every progress text the page shows, however briefly (polling alone can miss a
            # bar that lives for less than a poll interval on a fast machine)
            driver.execute_script("""
                window.seenProgress = [];
                new MutationObserver(() => document.querySelectorAll(
                    '.progress-level, .progress-text').forEach(
                        e => window.seenProgress.push(e.textContent))
                ).observe(document.body, {subtree: true, childList: true, characterData: true});
            """)
            done = generate(CAPTIONS[0])
            progress += driver.execute_script("return window.seenProgress")
            # the pipeline's per-stage bar ("generate", N/stages) appeared while it ran
            assert any("generate" in t for t in progress), set(progress)
            assert done.startswith(f"1 image of {size}×{size}"), done
            img = driver.find_element(By.CSS_SELECTOR, "#gen-grid img")
            shape = driver.execute_script("return [arguments[0].naturalWidth, "
                                         "arguments[0].naturalHeight]", img)
            assert shape == [size + 4, size + 4]        # one tile with the grid's 2 px border
            shown = _png_pixels(_fetch(img.get_attribute("src")))
            links = {os.path.basename(a.get_attribute("href")): a.get_attribute("href")
                     for a in driver.find_elements(By.CSS_SELECTOR, "#gen-files a")}
            assert set(links) >= {"sample-0.png", "sample-0.json"}, links
            down = tmp_path / "downloads"
            down.mkdir()
            for name in ("sample-0.png", "sample-0.json"):
                (down / name).write_bytes(_fetch(links[name]))
            side = json.loads((down / "sample-0.json").read_text())
            assert side["inputs"]["prompts"] == [CAPTIONS[0]] and side["output"] == "sample-0.png"
            np.testing.assert_array_equal(shown, read_png(str(down / "sample-0.png")))
            shot = tmp_path / "page.png"
            driver.save_screenshot(str(shot))
            if os.environ.get("UNCLIP_JAX_SERVE_SCREENSHOT"):
                shutil.copy(shot, os.environ["UNCLIP_JAX_SERVE_SCREENSHOT"])

            regen = subprocess.run([sys.executable, "-m", "unclip_jax.cli", "sample",
                                    "--from-sidecar", "sample-0.json", "--out", "regen.png",
                                    "--no-progress"], cwd=down, env=env, capture_output=True,
                                   text=True, timeout=600)
            assert regen.returncode == 0, regen.stderr[-2000:]
            np.testing.assert_array_equal(read_png(str(down / "regen.png")), shown)

            error = generate("")
            assert error.startswith("unclip-jax: error: no prompts given"), error
            assert driver.find_element(By.CSS_SELECTOR, "#gen-status textarea") \
                .get_property("value") == error

            again = generate(CAPTIONS[1], seed=1)       # the server still answers
            assert again.startswith(f"1 image of {size}×{size}"), again
            img = driver.find_element(By.CSS_SELECTOR, "#gen-grid img")
            assert np.abs(_png_pixels(_fetch(img.get_attribute("src"))).astype(int)
                          - shown.astype(int)).max() > 0
        finally:
            if driver is not None:
                driver.quit()
            assert server.poll() is None, "the server stopped"
