"""`cardless up` as a newcomer runs it: real processes, embedded servers, Ctrl-C, and again."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.support import REPO, eventually

START_TIMEOUT_S = 120


class City:
    """One `cardless up` process and the URLs it printed (read from a file: its servers
    inherit its stdout, so a pipe would outlive it)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.out = data_dir.with_suffix(".out")
        self.urls: dict[str, str] = {}
        self.proc: subprocess.Popen[bytes] | None = None

    async def __aenter__(self) -> City:
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shared.cli", "up", "--data-dir", str(self.data_dir)],
                env=city_env(),
                cwd=REPO,
                stdout=out,
            )
        lines = await eventually(
            self._printed, self._ready, within=START_TIMEOUT_S, what="cardless up ready"
        )
        self.urls = dict(line.partition(": ")[::2] for line in lines if ": " in line)
        return self

    async def _printed(self) -> list[str]:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"cardless up exited early with {self.proc.returncode}")
        return self.out.read_text().splitlines()

    @staticmethod
    def _ready(lines: list[str]) -> bool:
        return any(line.startswith("ready: ") for line in lines)

    async def interrupt(self) -> int:
        """Ctrl-C, as a terminal sends it; the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        return await asyncio.to_thread(self.proc.wait, 60)

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            await self.interrupt()


def city_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(CARDLESS_SERVICES="tests.platform_app:SERVICE", PYTHONPATH=str(REPO))
    return env


async def test_up_serves_ready_services_stops_cleanly_and_keeps_its_data(tmp_path: Path) -> None:
    async with City(tmp_path / "city") as city, aiohttp.ClientSession() as http:
        assert city.urls["redis"].startswith("redis://127.0.0.1:")
        services = {
            name: url
            for name, url in city.urls.items()
            if name not in ("redis", "postgres", "ready")
        }
        assert set(services) == {"notes"}
        for url in services.values():
            async with http.get(f"{url}/readyz") as response:
                assert response.status == 200
        async with http.post(f"{services['notes']}/notes", json={"key": "kept"}) as response:
            assert response.status == 201
            note_id = (await response.json())["id"]
        assert await city.interrupt() == 0

    async with City(tmp_path / "city") as again, aiohttp.ClientSession() as http:
        async with http.get(f"{again.urls['notes']}/notes/{note_id}") as response:
            assert response.status == 200
            assert (await response.json())["key"] == "kept"
        assert await again.interrupt() == 0


async def test_a_second_up_on_a_data_dir_in_use_fails_in_one_line(tmp_path: Path) -> None:
    async with City(tmp_path / "city"):
        second = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "shared.cli",
            "up",
            "--data-dir",
            str(tmp_path / "city"),
            env=city_env(),
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(second.communicate(), 60)
        assert second.returncode == 1
        message = err.decode().strip().splitlines()[-1]
        assert "is in use by another `cardless up`" in message
        assert "Traceback" not in err.decode()
