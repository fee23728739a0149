"""A gateway in Kubernetes mode: its replicas come from EndpointSlices (served by kmock, the stateful in-memory
Kubernetes API; the test plays the EndpointSlice controller) and the request's model picks the deployment.
The replicas are real `tokenyard serve` processes of a tiny model, under two served model names."""

from __future__ import annotations

import asyncio

import httpx
import kmock
import pytest

from ..runtime.server_process import ServerProcess
from .conftest import TENANTS, GatewayProcess
from .test_discovery import Cluster, endpoint, endpoint_slice, write_kubeconfig

pytestmark = pytest.mark.filterwarnings("ignore:read_binary is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def classifier_replica(tiny_model_dir, tmp_path_factory):
    flags = ["--model", str(tiny_model_dir), "--served-model-name", "classifier", "--max-model-len", "1024"]
    replica = ServerProcess(*flags, log=tmp_path_factory.mktemp("classifier") / "serve.log")
    yield replica
    replica.terminate()


def served(replica: ServerProcess) -> float:
    text = httpx.get(f"{replica.url}/metrics").text
    return replica.metric("vllm:request_success_total") if "vllm:request_success_total{" in text else 0.0


def slice_for(name: str, deployment: str, replica: ServerProcess, ready: bool = True) -> dict:
    ports = [{"name": "http", "port": replica.port, "protocol": "TCP"}]
    return endpoint_slice(name, [endpoint("127.0.0.1", ready=ready)], deployment=deployment, ports=ports)


@pytest.mark.asyncio
async def test_the_requests_model_picks_the_deployment_its_endpoint_slices_name(
    kmock: kmock.KubernetesEmulator,
    tiny_replicas,
    classifier_replica,
    redis_server,
    gateway_config,
    tmp_path,
    monkeypatch,
):
    kmock.resources.load_bundled()
    cluster = Cluster(kmock)
    # deployment "tiny": two replicas (one slice each, as they listen on different ports); "classifier": one
    await cluster.create(slice_for("tiny-a", "tiny", tiny_replicas[0]))
    await cluster.create(slice_for("tiny-b", "tiny", tiny_replicas[1]))
    await cluster.create(slice_for("classifier-a", "classifier", classifier_replica))
    kubeconfig = write_kubeconfig(
        tmp_path / "kubeconfig", {"kmock": {"server": str(kmock.url)}}, {"kmock": {"token": "t"}}, "kmock"
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    flags = ("--discovery", "kubernetes", "--namespace", "default")
    gateway = await asyncio.to_thread(GatewayProcess, [], redis_server.url, gateway_config, tmp_path / "gw.log", *flags)
    headers = {"Authorization": f"Bearer {TENANTS['acme']}"}

    async def ask(client: httpx.AsyncClient, model: str, user: str) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": user}], "max_tokens": 2, "temperature": 0.5}
        return await client.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers)

    try:
        async with httpx.AsyncClient(timeout=60) as client:
            before = [await asyncio.to_thread(served, r) for r in (*tiny_replicas, classifier_replica)]
            for i in range(4):
                assert (await ask(client, "tiny", f"hello {i}")).status_code == 200
                assert (await ask(client, "classifier", f"hello {i}")).status_code == 200
            after = [await asyncio.to_thread(served, r) for r in (*tiny_replicas, classifier_replica)]
            delta = [a - b for a, b in zip(after, before, strict=True)]
            assert delta[0] + delta[1] == 4 and delta[2] == 0 and delta[3] == 4

            models = (await client.get(f"{gateway.url}/v1/models")).json()
            assert {m["id"] for m in models["data"]} == {"tiny", "classifier"}
            unknown = await ask(client, "gpt-4", "hello")
            assert unknown.status_code == 404
            assert (
                unknown.json()["error"]["param"] == "model" and "classifier, tiny" in unknown.json()["error"]["message"]
            )

            # the controller marks one of tiny's replicas not ready: the gateway stops sending it traffic
            await cluster.patch("tiny-a", {"endpoints": [endpoint("127.0.0.1", ready=False)]})
            await asyncio.sleep(1)
            before = await asyncio.to_thread(served, tiny_replicas[0])
            for i in range(4):
                assert (await ask(client, "tiny", f"again {i}")).status_code == 200
            assert await asyncio.to_thread(served, tiny_replicas[0]) == before

            # the classifier deployment goes away: its model is no longer served here
            await cluster.delete("classifier-a")
            await asyncio.sleep(1)
            assert (await ask(client, "classifier", "hello")).status_code == 404
    finally:
        await asyncio.to_thread(gateway.stop)
