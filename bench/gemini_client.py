"""The Gemini online client's CPU and memory on realistic replies, against the emulator in its own process.

A Gemini online reply holds its image as base64 in the JSON: a 1.5 MB PNG is a 2 MB reply, read, parsed,
decoded and written by the client. The emulator (`--image-bytes 1500000`, about 1.5 MB PNGs) runs in its own
process, so only the `batcher run` process's CPU counts (`benchkit.sample`).

- cpu: 300 images, latency fixed 0.2 s, no rate limit: client CPU (user + system) per image, start-up and
  import included; a 1-image run measures that start-up, so the per-image cost without it is printed too.
- memory: 200 images, latency fixed 8 s, `--max-in-flight 100`: 100 calls are open at once and their replies
  all arrive together; the client's peak RSS (sampled every 20 ms) — target <= 400 MB. The emulator's count of
  concurrent requests shows that 100 were open.

    .venv/bin/python bench/gemini_client.py [--repeat 3] [--images 300] [--image-bytes 1500000]
    .venv/bin/python bench/gemini_client.py --only memory --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchkit import EmulatorProcess, Sampled, sample

IMAGE_BYTES = 1_500_000
MEMORY_TARGET_MB = 400.0


def run_batcher(emu: EmulatorProcess, tmp: Path, tag: str, images: int, extra: list[str]) -> Sampled:
    """`batcher run --provider gemini` of `images` new prompts, sampled; exits unless every image succeeded."""
    manifest = tmp / f"{tag}.csv"
    manifest.write_text("prompt\n" + "".join(f"Client bench {tag} {i}\n" for i in range(images)))
    emu.reset()
    env = {**os.environ, **emu.env()}
    cmd = [sys.executable, "-m", "batcher.cli", "run", str(manifest), "--provider", "gemini",
           "--db", str(tmp / f"{tag}.db"), "--out", str(tmp / f"out-{tag}"), "-q", "--json", *extra]  # fmt: skip
    run = sample(cmd, env, tmp)
    if run.code != 0:
        sys.exit(f"batcher failed ({run.code}): {run.err[-2000:]}")
    head = json.loads(run.out)
    if head["succeeded"] != images:
        sys.exit(f"batcher finished {head['succeeded']} of {images}: {run.out[-2000:]}")
    return run


def reply_mb(tmp: Path) -> float:
    """The size of one image the emulator serves, MB (2**20 bytes), from a file a run wrote."""
    pngs = sorted(tmp.glob("out-*/**/*.png"))
    return pngs[0].stat().st_size / 2**20 if pngs else float("nan")


def cpu(args: argparse.Namespace) -> None:
    n = args.images
    knobs = ["--latency", "fixed:0.2", "--image-bytes", str(args.image_bytes)]
    per_image: list[float] = []
    net: list[float] = []
    startup: list[float] = []
    walls: list[float] = []
    with EmulatorProcess(*knobs, provider="gemini") as emu, tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        for i in range(args.repeat):
            one = run_batcher(emu, tmp, f"one{i}", 1, [])
            full = run_batcher(emu, tmp, f"cpu{i}", n, [])
            startup.append(one.cpu_s)
            per_image.append(full.cpu_s / n * 1000)
            net.append((full.cpu_s - one.cpu_s) / (n - 1) * 1000)
            walls.append(full.wall_s)
            print(f"  run {i}: {full.cpu_s:.2f} s CPU ({full.sys_s:.2f} s system) for {n} images in {full.wall_s:.1f} s;"
                  f" 1-image run {one.cpu_s:.2f} s", file=sys.stderr, flush=True)  # fmt: skip
        size = reply_mb(tmp)
    print(f"\ncpu: {n} images of {size:.2f} MB (latency fixed 0.2 s, no limit), medians of {args.repeat} runs")
    print(f"  client CPU per image, start-up included: {statistics.median(per_image):.2f} ms "
          f"(runs: {', '.join(f'{x:.2f}' for x in per_image)})")  # fmt: skip
    print(f"  without start-up (a 1-image run: {statistics.median(startup):.2f} s CPU): "
          f"{statistics.median(net):.2f} ms per image (runs: {', '.join(f'{x:.2f}' for x in net)})")  # fmt: skip
    print(f"  wall {statistics.median(walls):.1f} s, {n / statistics.median(walls):.0f} images/s")


def memory(args: argparse.Namespace) -> None:
    n, in_flight = 2 * args.in_flight, args.in_flight
    knobs = ["--latency", "fixed:8", "--image-bytes", str(args.image_bytes)]
    peaks: list[float] = []
    open_at_once: list[int] = []
    with EmulatorProcess(*knobs, provider="gemini") as emu, tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        for i in range(args.repeat):
            run = run_batcher(emu, tmp, f"mem{i}", n, ["--max-in-flight", str(in_flight)])
            peaks.append(run.peak_mb)
            open_at_once.append(int(str(emu.stats()["peak_concurrent_requests"])))
            print(f"  run {i}: peak RSS {run.peak_mb:.0f} MB, {open_at_once[-1]} requests open at once, "
                  f"{run.wall_s:.1f} s", file=sys.stderr, flush=True)  # fmt: skip
        size = reply_mb(tmp)
    peak = statistics.median(peaks)
    print(f"\nmemory: {n} images of {size:.2f} MB, latency fixed 8 s, --max-in-flight {in_flight} "
          f"(requests open at once: {', '.join(map(str, open_at_once))}), medians of {args.repeat} runs")  # fmt: skip
    print(f"  client peak RSS: {peak:.0f} MB (runs: {', '.join(f'{x:.0f}' for x in peaks)}); "
          f"target <= {MEMORY_TARGET_MB:.0f} MB: {'met' if peak <= MEMORY_TARGET_MB else 'MISSED'}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("cpu", "memory"), default=None)
    ap.add_argument("--images", type=int, default=300, help="images of the CPU run")
    ap.add_argument("--in-flight", type=int, default=100, help="calls open at once in the memory run")
    ap.add_argument("--image-bytes", type=int, default=IMAGE_BYTES)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if args.only in (None, "cpu"):
        cpu(args)
    if args.only in (None, "memory"):
        memory(args)


if __name__ == "__main__":
    main()
