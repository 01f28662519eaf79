"""``python -m bench.topshot``: a screenshot of ``asynctask top``, live, in tmux.

Runs ``asynctask workers --metrics-port`` on three filesys queues with a steady producer
(one queue has no worker, so its tasks wait and age), starts ``asynctask top`` in a tmux
terminal of its own, reads the screen with ``capture-pane`` after a few refreshes and draws
it as a PNG with Pillow (``docs/top.png``): what a person sees, without a desktop.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from asynctask.api import get_transport
from asynctask.testing import FAST_CHECKS, clean_environment, workers_command
from bench.ours import ROOT

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"


def render(text: str, path: Path) -> None:
    """Draw terminal text as a PNG (light grey on near black, like a terminal)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(FONT, 15)
    lines = text.rstrip("\n").splitlines()
    width = max(len(line) for line in lines)
    _, top, _, bottom = font.getbbox("M")
    cell_w, cell_h = int(font.getlength("M") + 0.5), int((bottom - top) * 1.45) + 2
    image = Image.new("RGB", (width * cell_w + 24, len(lines) * cell_h + 24), (24, 24, 28))
    draw = ImageDraw.Draw(image)
    for row, line in enumerate(lines):
        draw.text((12, 12 + row * cell_h), line, font=font, fill=(220, 220, 220))
    image.save(path)


def main(argv: list[str]) -> int:
    """Run workers, a producer and top; capture the screen."""
    parser = argparse.ArgumentParser(prog="python -m bench.topshot", description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "top.png")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="bench-topshot-"))
    uri = f"filesys:{folder / 'queues'}"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    queues = {"emails": 2, "thumbnails": 1}
    command = workers_command(
        uri,
        {q: {"worker": "bench_demo", "concurrency": n} for q, n in queues.items()},
        "--import", "bench.workers", "-q", "--metrics-port", str(port),
        settings=FAST_CHECKS,
    )  # fmt: skip
    env = clean_environment()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    tmux = ["tmux", "-L", f"topshot-{uuid.uuid4().hex[:8]}"]
    top = (
        f"{sys.executable} -m asynctask top --interval 1 --set asynctask_transport={uri} "
        f"--metrics http://127.0.0.1:{port}/metrics"
    )
    transport = get_transport(uri)
    transport.submit_tasks("reports", [{"n": n} for n in range(37)])  # nobody serves it
    rng = random.Random(3)
    log = open(folder / "workers.log", "wb")  # noqa: SIM115 (closed with the process)
    with log, subprocess.Popen(command, env=env, cwd=folder, stdout=log, stderr=log) as workers:
        try:
            subprocess.run([*tmux, "new-session", "-d", "-x", "104", "-y", "14", top], check=True)
            began = time.monotonic()
            while time.monotonic() - began < args.seconds:
                transport.submit_tasks(
                    "emails",
                    [{"seconds": 0.01, "fail": rng.random() < 0.05} for _ in range(6)],
                )
                transport.submit_tasks(
                    "thumbnails",
                    [{"seconds": rng.expovariate(1 / 0.15)} for _ in range(rng.randint(0, 2))],
                )
                time.sleep(0.1)
            screen = subprocess.run(
                [*tmux, "capture-pane", "-p"], capture_output=True, text=True, check=True
            ).stdout
        finally:
            subprocess.run([*tmux, "kill-server"], capture_output=True)
            workers.terminate()
            workers.wait(60)
    render(screen, args.out)
    print(screen)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
