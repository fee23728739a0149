"""Active health checks: every replica's /health, every couple of seconds, all at once. A replica that refuses
the connection or answers anything but 200 (not loaded, draining, engine dead) leaves the rotation at once and
comes back when it answers 200 again. One that is merely slow to answer (a busy replica's event loop may be)
leaves only after several slow checks in a row: slowness alone is not a failure. A discovered deployment's
models are learnt from the first replica that answers."""

from __future__ import annotations

import asyncio
import logging
from enum import Enum

import aiohttp

from tokenyard.gateway.fleet import STATIC, Fleet
from tokenyard.gateway.metrics import GatewayMetrics
from tokenyard.gateway.router import Replica
from tokenyard.gateway.upstream import UpstreamClient

log = logging.getLogger(__name__)
INTERVAL_SECONDS = 2.0
CHECK_TIMEOUT_SECONDS = 2.0
CONNECT_TIMEOUT_SECONDS = 1.0
SLOW_CHECKS_TO_EJECT = 3


class Verdict(Enum):
    UP = "up"
    DOWN = "down"
    SLOW = "slow"


class HealthChecker:
    def __init__(self, fleet: Fleet, upstream: UpstreamClient, metrics: GatewayMetrics) -> None:
        self.fleet, self.upstream, self.metrics = fleet, upstream, metrics

    async def run(self, interval: float = INTERVAL_SECONDS) -> None:
        while True:
            try:
                await self.check_all()
            except Exception:  # a check that fails in an unforeseen way must not end all later checks
                log.exception("health check round failed; trying again in %.0f s", interval)
            await asyncio.sleep(interval)

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(deployment, replica) for deployment, replica in self.fleet.replicas()))
        for router in list(self.fleet.routers.values()):
            router.wake_for_room()  # a replica that came back is room for requests waiting in line

    async def check(self, deployment: str, replica: Replica) -> None:
        verdict = await self._probe(replica)
        if verdict is Verdict.UP and deployment != STATIC and deployment not in self.fleet.served:
            verdict = await self._learn_models(deployment, replica)
        if verdict is Verdict.UP:
            replica.restore()
        elif verdict is Verdict.DOWN:
            replica.eject()
        else:
            replica.slow_checks += 1
            if replica.slow_checks >= SLOW_CHECKS_TO_EJECT:
                replica.eject()
        self.metrics.upstream_healthy.labels(replica.url).set(1 if replica.healthy else 0)

    async def _probe(self, replica: Replica) -> Verdict:
        try:
            async with self.upstream.session.get(f"{replica.url}/health", timeout=_timeout()) as response:
                return Verdict.UP if response.status == 200 else Verdict.DOWN
        except aiohttp.ConnectionTimeoutError:
            return Verdict.DOWN
        except TimeoutError:
            return Verdict.SLOW
        except aiohttp.ClientError:
            return Verdict.DOWN

    async def _learn_models(self, deployment: str, replica: Replica) -> Verdict:
        url = f"{replica.url}/v1/models"
        try:
            async with self.upstream.session.get(url, headers=self.upstream.headers, timeout=_timeout()) as response:
                models = {m["id"] for m in (await response.json())["data"]}
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as error:
            log.warning("%s did not list its models (%s): it stays out of rotation", url, error)
            return Verdict.DOWN
        self.fleet.learn_models(deployment, models)
        return Verdict.UP


def _timeout() -> aiohttp.ClientTimeout:
    # A connection that cannot be made in time is a replica gone (DOWN); an answer that is late is a busy one.
    return aiohttp.ClientTimeout(total=CHECK_TIMEOUT_SECONDS, sock_connect=CONNECT_TIMEOUT_SECONDS)
