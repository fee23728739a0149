"""``tokenyard operator``: runs the LLMDeployment operator against the in-cluster config or the kubeconfig."""

from __future__ import annotations

import argparse
import asyncio
import secrets

from tokenyard.operator.config import OperatorConfig

DEFAULTS = OperatorConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", action="append", default=[], help="a namespace to watch (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)")
    parser.add_argument("--kubeconfig", default=None, help="default: in-cluster, else $KUBECONFIG or ~/.kube/config")
    peering = parser.add_mutually_exclusive_group()
    peering.add_argument(
        "--peering",
        default="tokenyard",
        help="the kopf peering object shared by the operator's replicas: the one with the highest priority "
        "reconciles, the others stand by (default: tokenyard)",
    )
    peering.add_argument("--standalone", action="store_true", help="one replica only: no peering object needed")
    parser.add_argument(
        "--priority", type=int, default=None, help="this replica's peering priority (default: random, never a tie)"
    )
    parser.add_argument("--runtime-image", default=DEFAULTS.runtime_image, help="the runtime image for GPU replicas")
    parser.add_argument("--runtime-cpu-image", default=DEFAULTS.runtime_cpu_image, help="the runtime image for gpus: 0")
    parser.add_argument(
        "--drift-interval",
        type=float,
        default=DEFAULTS.drift_interval_seconds,
        help="seconds between full reconciles that repair edited or deleted children",
    )
    parser.add_argument("--prometheus-url", default=None, help="Prometheus for KEDA ScaledObjects (when KEDA is in)")
    parser.add_argument("--liveness-port", type=int, default=8081, help="serves /healthz (0: off)")


def run(args: argparse.Namespace) -> int:
    import os

    import kopf

    from tokenyard.operator.handlers import build_registry, settings
    from tokenyard.operator.kube import KubernetesClient

    config = OperatorConfig(
        runtime_image=args.runtime_image,
        runtime_cpu_image=args.runtime_cpu_image,
        drift_interval_seconds=args.drift_interval,
        prometheus_url=args.prometheus_url,
    )
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig  # kopf's own login reads it from there
    api = KubernetesClient.from_environment(args.kubeconfig)
    registry = build_registry(config, api)
    kopf_settings = settings(config)
    kopf_settings.peering.mandatory = not args.standalone  # a missing peering object must not mean two leaders
    clusterwide = not args.namespace

    @kopf.on.login(registry=registry)
    def login(**kwargs: object) -> kopf.ConnectionInfo | None:
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)  # type: ignore[arg-type]

    asyncio.run(
        kopf.operator(
            registry=registry,
            settings=kopf_settings,
            clusterwide=clusterwide,
            namespaces=args.namespace,
            standalone=args.standalone,
            peering_name=None if args.standalone else args.peering,
            priority=args.priority if args.priority is not None else secrets.randbelow(2**31 - 1) + 1,
            liveness_endpoint=f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None,
        )
    )
    return 0
