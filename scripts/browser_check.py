#!/usr/bin/env python
"""Open an HTML page in headless Chromium and report what a person would see go wrong.

    python scripts/browser_check.py out/main/eval/index.html --screenshot page.png \
        [--width 1280 --height 900] [--full-page] [--clip SELECTOR]

Drives Chromium (Debian's `chromium` package, or CHROMIUM=/path/to/chrome) through the
DevTools protocol over its websocket, with a client of the standard library only: it opens
the page from disk with networking off, waits for its load event, then reports, as JSON on
stdout: the console errors and uncaught exceptions, the resources that failed to load, and
every <img> with its natural size (and whether that matches the page's `data-width` /
`data-height`, which the caeadmm report pages set), and writes a PNG screenshot. Exit code
0 when the page rendered cleanly, 1 otherwise, 2 when no Chromium is found.
tests/test_report.py imports it (`check_page`); `--clip .cmp` screenshots one element.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
    "--remote-debugging-port=0",
)

# Evaluated in the page once it has loaded: every image, loaded or not, with its sizes.
IMAGES_JS = """JSON.stringify(Array.from(document.images).map(function (im) {
  return {src: im.getAttribute('src'), complete: im.complete, naturalWidth: im.naturalWidth,
          naturalHeight: im.naturalHeight, width: +(im.dataset.width || 0),
          height: +(im.dataset.height || 0)};
}))"""


def find_chromium() -> str | None:
    """CHROMIUM from the environment, else the first Chromium on the PATH, else None."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else shutil.which(explicit)
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


class CDPError(RuntimeError):
    """Chromium did not start, or the DevTools protocol answered with an error."""


class _WebSocket:
    """The client side of RFC 6455, enough for the DevTools protocol: text frames, masked."""

    def __init__(self, url: str, timeout: float) -> None:
        rest = url.removeprefix("ws://")
        hostport, _, path = rest.partition("/")
        host, _, port = hostport.partition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise CDPError("DevTools closed the connection during the handshake")
            response += chunk
        head, _, self.buffer = response.partition(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise CDPError(f"DevTools refused the websocket: {head[:200]!r}")

    def send(self, text: str) -> None:
        payload = text.encode()
        n = len(payload)
        header = bytes([0x81])  # FIN, text
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + n.to_bytes(2, "big")
        else:
            header += bytes([0x80 | 127]) + n.to_bytes(8, "big")
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buffer)))
            if not chunk:
                raise CDPError("DevTools closed the connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def receive(self) -> str:
        """The next text message (fragments joined; pings answered)."""
        parts = []
        while True:
            first, second = self._read(2)
            opcode, n = first & 0x0F, second & 0x7F
            if n == 126:
                n = int.from_bytes(self._read(2), "big")
            elif n == 127:
                n = int.from_bytes(self._read(8), "big")
            mask = self._read(4) if second & 0x80 else None
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x8:
                raise CDPError("DevTools closed the websocket")
            if opcode == 0x9:  # ping: answer with a (masked, empty) pong
                self.sock.sendall(bytes([0x8A, 0x80]) + os.urandom(4))
                continue
            if opcode in (0x0, 0x1, 0x2):
                parts.append(payload)
                if first & 0x80:
                    return b"".join(parts).decode()

    def close(self) -> None:
        self.sock.close()


@dataclass
class PageReport:
    """What the browser saw: errors of any kind, the images and the screenshot."""

    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    screenshot: Path | None = None
    chromium: str = ""
    evaluated: object = None  # what the `evaluate` expression returned

    @property
    def bad_images(self) -> list[dict]:
        """Images not loaded, or loaded at another size than the page says they have."""
        return [im for im in self.images if not im["complete"] or im["naturalWidth"] == 0
                or (im["width"] and im["naturalWidth"] != im["width"])
                or (im["height"] and im["naturalHeight"] != im["height"])]

    @property
    def ok(self) -> bool:
        return not (self.console_errors or self.failed_requests or self.bad_images)

    def as_dict(self) -> dict:
        return {"ok": self.ok, "chromium": self.chromium, "console_errors": self.console_errors,
                "failed_requests": self.failed_requests, "bad_images": self.bad_images,
                "images": len(self.images),
                "screenshot": str(self.screenshot) if self.screenshot else None}


class _Session:
    """One page target of a running Chromium, over the browser's websocket (flat mode)."""

    def __init__(self, ws: _WebSocket, deadline: float) -> None:
        self.ws, self.deadline, self.next_id, self.events = ws, deadline, 0, []
        self.session_id: str | None = None

    def call(self, method: str, params: dict | None = None, page: bool = True) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if page and self.session_id:
            message["sessionId"] = self.session_id
        self.ws.send(json.dumps(message))
        while True:
            reply = self._next()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise CDPError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def wait_for(self, method: str) -> dict:
        seen = next((e for e in self.events if e["method"] == method), None)
        while seen is None:
            seen = self._next()
            seen = seen if seen.get("method") == method else None
        return seen

    def _next(self) -> dict:
        if time.monotonic() > self.deadline:
            raise CDPError("timed out waiting for Chromium")
        message = json.loads(self.ws.receive())
        if "method" in message:
            self.events.append(message)
        return message


def _errors(events: list[dict]) -> tuple[list[str], list[str]]:
    """(console errors and exceptions, failed requests) among the page's events."""
    console, failed = [], []
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            console.append(" ".join(str(a.get("value", a.get("description", "")))
                                    for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            console.append(details.get("exception", {}).get("description")
                           or details.get("text", "exception"))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            console.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            failed.append(f"{params.get('errorText')} (request {params.get('requestId')})")
    return console, failed


def check_page(page: str | os.PathLike, screenshot: str | os.PathLike | None = None, *,
               width: int = 1280, height: int = 900, full_page: bool = False,
               clip: str | None = None, chromium: str | None = None,
               evaluate: str | None = None, timeout: float = 60.0) -> PageReport:
    """Load `page` (a file) in headless Chromium; return what it saw (PageReport).

    The screenshot is the viewport (`width` x `height` CSS px), the whole page with
    `full_page`, or the element that the CSS selector `clip` picks. `evaluate`, a JavaScript
    expression, runs in the page after the images are counted (to click through it); its
    JSON-able value comes back as `evaluated`, and errors it causes count. CDPError when Chromium
    cannot be found or started or does not answer within `timeout` seconds.
    """
    binary = chromium or find_chromium()
    if binary is None:
        raise CDPError("no Chromium found (apt-get install chromium, or set CHROMIUM)")
    url = Path(page).resolve().as_uri()
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="caeadmm-chromium-") as profile:
        process = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
             f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        try:
            return _drive(process, Path(profile), url, screenshot, width, height, full_page,
                          clip, evaluate, deadline, binary)
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            process.stderr.close()


def _drive(process: subprocess.Popen, profile: Path, url: str,
           screenshot: str | os.PathLike | None, width: int, height: int, full_page: bool,
           clip: str | None, evaluate: str | None, deadline: float, binary: str
           ) -> PageReport:
    port_file = profile / "DevToolsActivePort"
    while not port_file.is_file() or len(port_file.read_text().split()) < 2:
        if process.poll() is not None:
            raise CDPError(f"{binary} exited with {process.returncode}: "
                           f"{process.stderr.read().decode(errors='replace')[-2000:]}")
        if time.monotonic() > deadline:
            raise CDPError(f"{binary} did not open its DevTools port")
        time.sleep(0.05)
    port, path = port_file.read_text().split()[:2]
    ws = _WebSocket(f"ws://127.0.0.1:{port}{path}", timeout=max(1.0, deadline - time.monotonic()))
    try:
        cdp = _Session(ws, deadline)
        target = cdp.call("Target.createTarget", {"url": "about:blank"}, page=False)
        attached = cdp.call("Target.attachToTarget",
                            {"targetId": target["targetId"], "flatten": True}, page=False)
        cdp.session_id = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            cdp.call(f"{domain}.enable")
        cdp.call("Emulation.setDeviceMetricsOverride",
                 {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        cdp.events.clear()
        cdp.call("Page.navigate", {"url": url})
        cdp.wait_for("Page.loadEventFired")
        report = PageReport(chromium=binary)
        images = cdp.call("Runtime.evaluate", {"expression": IMAGES_JS, "returnByValue": True})
        report.images = json.loads(images["result"]["value"])
        if evaluate is not None:
            result = cdp.call("Runtime.evaluate", {"expression": evaluate, "returnByValue": True})
            if "exceptionDetails" in result:
                report.console_errors.append(str(result["exceptionDetails"].get("exception", {})
                                                 .get("description", result["exceptionDetails"])))
            report.evaluated = result.get("result", {}).get("value")
        if screenshot is not None:
            params: dict = {"format": "png"}
            if clip:
                found = cdp.call("Runtime.evaluate", {"returnByValue": True, "expression": (
                    f"(function(){{var r=document.querySelector({json.dumps(clip)})"
                    ".getBoundingClientRect();return [r.left+scrollX,r.top+scrollY,r.width,"
                    "r.height];})()")})
                x, y, w, h = found["result"]["value"]
                params.update(clip={"x": x, "y": y, "width": w, "height": h, "scale": 1},
                              captureBeyondViewport=True)
            elif full_page:
                metrics = cdp.call("Page.getLayoutMetrics")
                size = metrics.get("cssContentSize") or metrics["contentSize"]
                params.update(clip={"x": 0, "y": 0, "width": width,
                                    "height": size["height"], "scale": 1},
                              captureBeyondViewport=True)
            shot = cdp.call("Page.captureScreenshot", params)
            Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
            report.screenshot = Path(screenshot)
        console, report.failed_requests = _errors(cdp.events)
        report.console_errors += console
        try:
            cdp.call("Browser.close", page=False)
        except CDPError:
            pass  # it closes as it answers
        return report
    finally:
        ws.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("--screenshot", type=Path, help="PNG to write")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--full-page", action="store_true")
    parser.add_argument("--clip", metavar="SELECTOR", help="screenshot this element only")
    args = parser.parse_args(argv)
    if find_chromium() is None:
        print("browser_check: no Chromium found (apt-get install chromium, or set CHROMIUM)",
              file=sys.stderr)
        return 2
    report = check_page(args.page, args.screenshot, width=args.width, height=args.height,
                        full_page=args.full_page, clip=args.clip)
    print(json.dumps(report.as_dict(), indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
