"""The floor under the runner's CPU: the same requests made by a bare aiohttp script, nothing else.

Each task is what a run of batcher sends: a create, polls after a delay until the image is done, and the download
(read and thrown away), with the same concurrency, one session, uvloop. No store, no files, no rate gate. Run by
runner_overhead.py against the same emulator; prints one JSON object.

    python bench/http_floor.py BASE_URL API_KEY [--tasks 5000] [--in-flight 256] [--first-poll 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp
import uvloop


async def floor(base: str, key: str, tasks: int, in_flight: int, first_poll: float) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {key}"}
    timeout = aiohttp.ClientTimeout(total=60, connect=10, sock_read=30)
    requests = 0
    async with aiohttp.ClientSession(timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()) as http:
        slots = asyncio.Semaphore(in_flight)

        async def one(i: int) -> None:
            nonlocal requests
            async with slots:
                body = {"model": "gemini-3.1-flash-lite-image", "prompt": f"floor {time.time()} {i}", "quality": "1K",
                        "size": "1x1"}  # fmt: skip
                async with http.post(f"{base}/image-generation", json=body, headers=headers) as r:
                    task_id = json.loads(await r.read())["data"]["task_id"]
                requests += 1
                wait = first_poll
                while True:
                    await asyncio.sleep(wait)
                    wait = 0.5
                    query = f"{base}/query/image-generation"
                    async with http.get(query, params={"task_id": task_id}, headers=headers) as r:
                        data = json.loads(await r.read())["data"]
                    requests += 1
                    if str(data["status"]).lower() in ("success", "succeeded", "completed"):
                        break
                url = data.get("file_url") or data["output_images"][0]
                async with http.get(url, headers=headers) as r:
                    async for _ in r.content.iter_chunked(256 * 1024):
                        pass
                requests += 1

        started = time.process_time()
        await asyncio.gather(*(one(i) for i in range(tasks)))
        cpu = time.process_time() - started
    return {"cpu_ms_per_task": 1000 * cpu / tasks, "requests_per_task": requests / tasks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base_url")
    ap.add_argument("api_key")
    ap.add_argument("--tasks", type=int, default=5000)
    ap.add_argument("--in-flight", type=int, default=256)
    ap.add_argument("--first-poll", type=float, default=1.0)
    args = ap.parse_args()
    print(json.dumps(uvloop.run(floor(args.base_url, args.api_key, args.tasks, args.in_flight, args.first_poll))))


if __name__ == "__main__":
    main()
