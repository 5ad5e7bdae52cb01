"""Browser fixtures: Debian's Chromium driven by Playwright (never Playwright's own download).

``chromium`` finds ``/usr/bin/chromium`` (or ``chromium`` on PATH, or ``$BROWSER_PATH``); when
there is none it installs Debian's package (``apt-get install -y chromium``, through ``sudo -n``
when not root), and skips only if that fails too. ``browser`` is one headless Chromium for the
session (Playwright gives it a fresh temporary profile); ``offline_page`` is a new page whose
http(s) requests are aborted and listed, so a test can assert a page needed no network;
``local_page`` may reach 127.0.0.1 only. ``jupyter_lab`` runs this environment's JupyterLab on
a free loopback port with a random token and kills its process group afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

# the test notebook is opened by test_lab.py in JupyterLab, not collected (e.g. by nbval)
collect_ignore = ["panel_check.ipynb"]

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _find() -> str | None:
    env = os.environ.get("BROWSER_PATH")
    if env and os.access(env, os.X_OK):
        return env
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _install() -> str:
    """Try Debian's package; return what happened (for the skip reason)."""
    if shutil.which("apt-get") is None:
        return "no apt-get on this system"
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
            done = subprocess.run(sudo + cmd, capture_output=True, text=True, timeout=900,
                                  env=env)
            if done.returncode:
                return f"{' '.join(cmd)} failed: {done.stderr.strip()[-300:]}"
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"installing chromium failed: {e}"
    return "installed"


@pytest.fixture(scope="session")
def chromium() -> str:
    path = _find()
    if path is None:
        what = _install()
        path = _find()
        if path is None:
            pytest.skip(f"Chromium not found and could not be installed ({what}); "
                        "install it with: sudo apt-get install chromium")
    return path


@pytest.fixture(scope="session")
def browser(chromium):
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="pip install playwright (no browser download needed)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=ARGS, timeout=60_000)
        try:
            yield b
        finally:
            b.close()


@contextlib.contextmanager
def _guarded_page(browser, viewport: dict, allowed: tuple[str, ...] = ()):
    """A page in a fresh context; http(s) requests not starting with ``allowed`` are aborted
    and their URLs recorded in ``page.blocked``."""
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    page.set_default_timeout(30_000)
    blocked: list[str] = []

    def abort(route):
        blocked.append(route.request.url)
        route.abort()

    page.route(lambda url: url.startswith(("http://", "https://"))
               and not (allowed and url.startswith(allowed)), abort)
    page.blocked = blocked
    try:
        yield page
    finally:
        context.close()


@pytest.fixture
def offline_page(browser):
    """A page in a fresh context; every http(s) request is aborted and recorded in .blocked."""
    with _guarded_page(browser, {"width": 1200, "height": 900}) as page:
        yield page


# --------------------------------------------------------------------------- JupyterLab


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmdline(pid: int) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def _children(pid: int) -> dict[int, bytes]:
    """Direct children of ``pid`` with their command lines (Linux /proc): the kernels."""
    kids = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and (cmd := _cmdline(int(stat.parent.name))):
            kids[int(stat.parent.name)] = cmd
    return kids


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL what is left, kernels included.

    jupyter_client starts each kernel in a session of its own, so the server's process
    group does not hold them: they are found as the server's children first, and killed by
    id if the server's own shutdown did not end them.
    """
    kernels = _children(proc.pid) if proc.poll() is None else {}
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=15)
    for pid, cmd in kernels.items():
        if _cmdline(pid) == cmd:                  # still that process, not a reused id
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def jupyter_lab(tmp_path_factory):
    """A JupyterLab server of this environment on 127.0.0.1 with a random token.

    Runs ``jupyter lab`` from the venv's bin (so the ``python3`` kernel is the venv's Python),
    serving a fresh temporary root; its settings silence news and update checks (no
    network, no toasts over the page). Yields (url, token, root); the whole process group is
    terminated afterwards, whatever happened.
    """
    jupyter = Path(sys.executable).with_name("jupyter")
    if not jupyter.exists():
        pytest.skip(f"no {jupyter}: install jupyterlab into this environment (make setup)")
    base = tmp_path_factory.mktemp("lab")
    root, settings = base / "root", base / "settings"
    root.mkdir()
    notif = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notif.parent.mkdir(parents=True)
    notif.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    # every cell in the DOM and laid out (no windowing): figures below the fold draw too
    tracker = settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}))
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTERLAB_WORKSPACES_DIR": str(base / "workspaces"),
           "JUPYTER_RUNTIME_DIR": str(base / "runtime"), "PYTHONUNBUFFERED": "1"}
    log = (base / "server.log").open("w")
    cmd = [str(jupyter), "lab", "--no-browser", "--ServerApp.open_browser=False",
           "--ip=127.0.0.1", f"--port={port}", "--port-retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           *(["--allow-root"] if os.geteuid() == 0 else [])]
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n"
                                   f"{(base / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("jupyter lab did not answer /api/status within 90 s:\n"
                                   f"{(base / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield SimpleNamespace(url=url, token=token, root=root, log=base / "server.log")
    finally:
        _stop(proc)
        log.close()


@pytest.fixture
def local_page(browser):
    """A page in a fresh context that may reach 127.0.0.1 only (other hosts are aborted)."""
    with _guarded_page(browser, {"width": 1400, "height": 1300},
                       allowed=("http://127.0.0.1:", "http://localhost:")) as page:
        yield page
