"""The kopf handlers: thin, each one calls the Reconciler. A registry is built per operator (not at import), so
tests and the CLI pick their own intervals and client.

- create / update / resume: apply the children, then publish the status;
- a timer: the same, every drift interval, which repairs children someone edited or deleted;
- events of the children (Deployment, pods, Service, PDB): publish the status at once; a deleted child is
  recreated at once too;
- delete: remove the children, then kopf releases the finalizer.
API errors that say "later" (409, 429, 5xx, no answer) are retried with exponential back-off."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from tokenyard.operator.children import LABEL_DEPLOYMENT, MANAGED_BY
from tokenyard.operator.config import OperatorConfig
from tokenyard.operator.kube import KubernetesClient, api_error_message, is_transient
from tokenyard.operator.reconcile import LLMD, ForeignChild, InvalidSpec, Reconciler
from tokenyard.operator.resource import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

FINALIZER = "tokenyard.dev/finalizer"
WATCHED_CHILDREN = (("apps", "v1", "deployments"), ("", "v1", "services"), ("policy", "v1", "poddisruptionbudgets"))


def post_event(body: dict[str, Any], reason: str, message: str, warning: bool) -> None:
    # kopf reads any mapping here (build_object_reference only .get()s it); its annotation names its own Body view
    (kopf.warn if warning else kopf.info)(body, reason=reason, message=message)  # type: ignore[arg-type]


def settings(config: OperatorConfig) -> kopf.OperatorSettings:
    """kopf keeps its bookkeeping in tokenyard.dev annotations, so the status holds only what we publish."""
    result = kopf.OperatorSettings()
    result.persistence.finalizer = FINALIZER
    result.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    result.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    result.posting.level = logging.INFO
    result.watching.server_timeout = 300  # re-list now and then: a watch can silently miss events
    return result


def build_registry(config: OperatorConfig, api: KubernetesClient) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    reconciler = Reconciler(api, config, post_event)
    resource = (GROUP, VERSION, PLURAL)

    def backoff(retry: int) -> float:
        return min(config.api_retry_base_seconds * 2.0**retry, config.api_retry_max_seconds)

    def retrying(handler: Callable[..., Any]) -> Callable[..., Any]:
        """Transient API errors become kopf.TemporaryError (retried with back-off); a spec that cannot work is
        reported in the status and not retried until it changes."""

        @functools.wraps(handler)
        def wrapped(*, body: kopf.Body, retry: int = 0, **kwargs: Any) -> Any:
            try:
                return handler(body=body, **kwargs)
            except (InvalidSpec, ForeignChild) as error:
                reason = "InvalidSpec" if isinstance(error, InvalidSpec) else "ChildConflict"
                reconciler.publish_failure(dict(body), reason, str(error))
                raise kopf.PermanentError(str(error)) from None
            except Exception as error:
                if not is_transient(error):
                    raise
                detail = api_error_message(error) if isinstance(error, ApiException) else repr(error)
                delay = backoff(retry)
                log.warning(
                    "API error reconciling %s (retry %d in %.1fs): %s", body["metadata"]["name"], retry, delay, detail
                )
                raise kopf.TemporaryError(f"API error, retrying: {detail}", delay=delay) from None

        return wrapped

    @kopf.on.resume(*resource, registry=registry)
    @kopf.on.create(*resource, registry=registry)
    @kopf.on.update(*resource, registry=registry, field="spec")
    @retrying
    def reconcile(body: kopf.Body, **_: Any) -> None:
        reconciler.apply(dict(body))
        reconciler.publish_status(dict(body))

    @kopf.timer(
        *resource,
        registry=registry,
        interval=config.drift_interval_seconds,
        initial_delay=config.drift_interval_seconds,
    )
    @retrying
    def repair_drift(body: kopf.Body, **_: Any) -> None:
        changes = reconciler.apply(dict(body))
        if changes:
            log.info("repaired drift of %s: %s", body["metadata"]["name"], "; ".join(changes))
        reconciler.publish_status(dict(body))

    @kopf.on.delete(*resource, registry=registry)
    @retrying
    def remove_children(body: kopf.Body, **_: Any) -> None:
        deleted = reconciler.delete_children(dict(body))
        if deleted:
            post_event(dict(body), "Deleted", "deleted " + ", ".join(deleted), False)

    def owner_of(child: kopf.Body) -> dict[str, Any] | None:
        name = child["metadata"].get("labels", {}).get(LABEL_DEPLOYMENT)
        return api.get(LLMD, child["metadata"]["namespace"], name) if name else None

    def on_child_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        """Status follows the children's own reports at once; a child deleted by hand is put back at once."""
        try:
            owner = owner_of(body)
            if owner is None or owner["metadata"].get("deletionTimestamp"):
                return
            if event.get("type") == "DELETED" and body.get("kind") != "Pod":
                reconciler.apply(owner)
            reconciler.publish_status(owner)
        except Exception as error:  # the timer retries; an event handler's failure must not stop the watch
            log.warning("could not follow a child of %s: %r", body["metadata"].get("name"), error)

    for group, version, plural in (*WATCHED_CHILDREN, ("", "v1", "pods")):
        kopf.on.event(group, version, plural, registry=registry, labels={**MANAGED_BY, LABEL_DEPLOYMENT: kopf.PRESENT})(
            on_child_event
        )

    @kopf.timer(*resource, registry=registry, interval=config.status_interval_seconds, id="status")
    def refresh_status(body: kopf.Body, **_: Any) -> None:
        try:
            reconciler.publish_status(dict(body))
        except Exception as error:
            log.warning("could not refresh the status of %s: %r", body["metadata"]["name"], error)

    return registry
