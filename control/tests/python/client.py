"""The Python `kubernetes` client against a Flotilla API server.

Run by control/tests/python_client.rs with FLOTILLA_URL set; exits non-zero
with the failed assertion on any difference from Kubernetes' behaviour.
"""

import os

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

configuration = client.Configuration()
configuration.host = os.environ["FLOTILLA_URL"]
api_client = client.ApiClient(configuration)
core = client.CoreV1Api(api_client)
apps = client.AppsV1Api(api_client)
batch = client.BatchV1Api(api_client)
NS = "py"


def expect_error(status, call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except ApiException as error:
        assert error.status == status, f"expected {status}, got {error.status}: {error.body}"
        return error
    raise AssertionError(f"{call.__name__} should have failed with {status}")


core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
namespaces = [n.metadata.name for n in core.list_namespace().items]
assert NS in namespaces and "default" in namespaces, namespaces

# Typed create, get and list with a label selector.
settings = client.V1ConfigMap(
    metadata=client.V1ObjectMeta(name="settings", labels={"app": "py"}),
    data={"mode": "a"},
)
created = core.create_namespaced_config_map(NS, settings)
assert created.metadata.uid and created.metadata.resource_version
core.create_namespaced_config_map(
    NS, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="other"), data={})
)
listed = core.list_namespaced_config_map(NS, label_selector="app=py")
assert [item.metadata.name for item in listed.items] == ["settings"], listed.items
fetched = core.read_namespaced_config_map("settings", NS)
assert fetched.data == {"mode": "a"}
expect_error(409, core.create_namespaced_config_map, NS, settings)

# A watch from the list's resourceVersion sees the change made after it.
core.patch_namespaced_config_map("settings", NS, {"data": {"mode": "b"}})
stream = watch.Watch()
seen = []
for event in stream.stream(
    core.list_namespaced_config_map,
    NS,
    label_selector="app=py",
    resource_version=listed.metadata.resource_version,
    timeout_seconds=30,
):
    seen.append((event["type"], event["object"].data["mode"]))
    if event["type"] == "MODIFIED":
        stream.stop()
assert seen == [("MODIFIED", "b")], seen

# Optimistic concurrency: a replace from a stale copy is a 409 Conflict.
fetched.data = {"mode": "stale"}
conflict = expect_error(409, core.replace_namespaced_config_map, "settings", NS, fetched)
assert "Conflict" in conflict.body, conflict.body

# A Deployment with defaults filled in, and its scale subresource.
deployment = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web"},
    "spec": {
        "replicas": 1,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "hello-http:1.0"}]},
        },
    },
}
apps.create_namespaced_deployment(NS, deployment)
scale = apps.patch_namespaced_deployment_scale("web", NS, {"spec": {"replicas": 3}})
assert scale.spec.replicas == 3, scale
web = apps.read_namespaced_deployment("web", NS)
assert web.spec.replicas == 3
assert web.spec.strategy.rolling_update.max_surge == "25%", web.spec.strategy
assert web.metadata.generation == 2, web.metadata.generation

# A Job, through the batch group.
job = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "metadata": {"name": "once"},
    "spec": {
        "template": {
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "once", "image": "job:1.0"}],
            }
        }
    },
}
created_job = batch.create_namespaced_job(NS, job)
assert created_job.spec.backoff_limit == 6, created_job.spec

# Invalid input is a 422 that names the field, and nothing is written.
invalid = expect_error(
    422,
    core.create_namespaced_config_map,
    NS,
    {"metadata": {"name": "Not_A_Name"}, "data": {}},
)
assert "metadata.name" in invalid.body, invalid.body
names = [item.metadata.name for item in core.list_namespaced_config_map(NS).items]
assert sorted(names) == ["other", "settings"], names

# Delete, then 404.
core.delete_namespaced_config_map("settings", NS)
expect_error(404, core.read_namespaced_config_map, "settings", NS)
print("ok")
