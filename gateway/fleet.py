"""The deployments the gateway routes to. With static upstreams there is one, and it takes every model (its
replicas answer for the models they do not serve). In Kubernetes, discovery reports each deployment's ready
replicas; a request's ``model`` picks the deployment whose replicas serve that name (as their /v1/models says)
or, failing that, the deployment of that name."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from tokenyard.gateway.router import Replica, Router

STATIC = "static"


class Fleet:
    def __init__(self, static_upstreams: list[str], make_router: Callable[[list[str]], Router] = Router) -> None:
        self.make_router = make_router  # a deployment's router, with the gateway's admission bounds
        self.routers: dict[str, Router] = {STATIC: make_router(static_upstreams)} if static_upstreams else {}
        self.served: dict[str, set[str]] = {}  # deployment -> model names its replicas reported
        self.labels: dict[str, dict[str, str]] = {}  # deployment -> its tokenyard.dev/* labels (cache policy)

    def update(self, replicas: dict[str, list[str]]) -> None:
        """Discovery's latest view: deployment ("namespace/name") -> its ready replicas' base URLs."""
        for gone in self.routers.keys() - replicas.keys():
            del self.routers[gone]
            self.served.pop(gone, None)
        for deployment, urls in replicas.items():
            if deployment in self.routers:
                self.routers[deployment].update(urls)
            else:
                self.routers[deployment] = self.make_router(urls)

    def router_for(self, model: str) -> Router | None:
        deployment = self.deployment_for(model)
        return None if deployment is None else self.routers[deployment]

    def deployment_for(self, model: str) -> str | None:
        if STATIC in self.routers:
            return STATIC
        for deployment, models in self.served.items():
            if model in models and deployment in self.routers:
                return deployment
        named = [d for d in self.routers if d.rsplit("/", 1)[-1] == model]
        return named[0] if len(named) == 1 else None

    def labels_for(self, model: str) -> dict[str, str]:
        deployment = self.deployment_for(model)
        return self.labels.get(deployment, {}) if deployment else {}

    def learn_models(self, deployment: str, models: set[str]) -> None:
        self.served[deployment] = models

    def models(self) -> list[str]:
        """Every model name a request may ask for."""
        names = {name for models in self.served.values() for name in models}
        return sorted(names | {d.rsplit("/", 1)[-1] for d in self.routers if d not in self.served and d != STATIC})

    def replicas(self) -> Iterator[tuple[str, Replica]]:
        for deployment, router in list(self.routers.items()):
            for replica in router.replicas:
                yield deployment, replica
