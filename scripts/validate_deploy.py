"""Python half of scripts/validate-deploy.sh: offline checks of rendered manifests and compose.

validate_deploy.py manifests [--context FILE]... FILE...
    Every document of every FILE (YAML, multi-document; `kubectl kustomize` output) is
    validated: Kubernetes kinds against the schemas `kubernetes-validate` carries (strict:
    unknown fields are errors), KEDA kinds against the schemas vendored in k8s/vendor/,
    any other kind is an error. Then cross-references are checked (a Service that selects
    no pod, a ScaledObject aimed at a missing Deployment, ...). --context files (the
    Secret template) only count as existing objects for those references.

validate_deploy.py compose-to-json OUT_DIR FILE...
    Writes each compose FILE as JSON for check-jsonschema, resolving Compose's merge tags
    (`!reset`, `!override`), which are YAML syntax and not part of the schema's data model.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils as kv_utils
import yaml

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "k8s" / "vendor"
CUSTOM_SCHEMAS = {
    ("keda.sh/v1alpha1", kind): VENDOR / f"{kind.lower()}-keda-v1alpha1.json"
    for kind in ("ScaledObject", "TriggerAuthentication")
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
# The oldest Kubernetes the manifests are meant for (policy/v1 PDBs with
# unhealthyPodEvictionPolicy, autoscaling/v2); they are also checked against the newest.
OLDEST_KUBERNETES = "1.30"

Doc = dict[str, Any]

# kubernetes-validate re-reads (and re-parses) its multi-MB definitions file for every
# resource; the files never change within a run, so parse each once.
kv_utils.schema_contents = functools.lru_cache(maxsize=None)(kv_utils.schema_contents)


def load_documents(path: Path) -> list[Doc]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d]


def name_of(doc: Doc) -> str:
    return f"{doc.get('kind', '?')}/{doc.get('metadata', {}).get('name', '?')}"


@functools.cache
def _custom_validator(schema_path: Path) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(schema_path.read_text()))


def validate_document(doc: Doc, k8s_version: str) -> list[str]:
    """Schema errors of one document (empty when valid)."""
    key = (doc.get("apiVersion", ""), doc.get("kind", ""))
    if key in CUSTOM_SCHEMAS:
        validator = _custom_validator(CUSTOM_SCHEMAS[key])
        return [
            f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(doc)
        ]
    if key[0].split("/")[0].endswith("keda.sh"):
        return [f"no vendored schema for {key[0]} {key[1]} (add it to k8s/vendor/)"]
    try:
        kubernetes_validate.validate(doc, k8s_version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}"]
    except (kv_utils.SchemaNotFoundError, kv_utils.InvalidSchemaError) as e:
        return [e.message]
    return []


def _pod_labels(docs: Iterable[Doc]) -> dict[str, dict[str, str]]:
    return {
        name_of(d): d["spec"]["template"]["metadata"].get("labels", {})
        for d in docs
        if d.get("kind") in WORKLOAD_KINDS
    }


def _selects_some_pod(selector: dict[str, str], pods: dict[str, dict[str, str]]) -> bool:
    return any(selector.items() <= labels.items() for labels in pods.values())


def check_references(docs: list[Doc], context: list[Doc]) -> list[str]:
    """Dangling references between objects that the schemas cannot see."""
    everything = docs + context
    names = {name_of(d) for d in everything}
    pods = _pod_labels(everything)
    services = {d["metadata"]["name"]: d for d in everything if d.get("kind") == "Service"}
    errors: list[str] = []

    def need(owner: Doc, target: str) -> None:
        if target not in names:
            errors.append(f"{name_of(owner)} refers to missing {target}")

    for d in docs:
        kind, spec = d.get("kind"), d.get("spec", {})
        if kind == "Service" and not _selects_some_pod(spec.get("selector", {}), pods):
            errors.append(f"{name_of(d)}: selector matches no pod template")
        elif kind == "PodDisruptionBudget":
            if not _selects_some_pod(spec["selector"].get("matchLabels", {}), pods):
                errors.append(f"{name_of(d)}: selector matches no pod template")
        elif kind in {"HorizontalPodAutoscaler", "ScaledObject"}:
            ref = spec["scaleTargetRef"]
            need(d, f"{ref.get('kind', 'Deployment')}/{ref['name']}")
            for trigger in spec.get("triggers", []):
                if "authenticationRef" in trigger:
                    auth = trigger["authenticationRef"]
                    need(d, f"{auth.get('kind', 'TriggerAuthentication')}/{auth['name']}")
        elif kind == "TriggerAuthentication":
            for ref in spec.get("secretTargetRef", []):
                need(d, f"Secret/{ref['name']}")
        elif kind == "Ingress":
            errors += _ingress_errors(d, services)
        elif kind in WORKLOAD_KINDS:
            for ref in _config_refs(spec["template"]["spec"]):
                need(d, ref)
    return errors


def _ingress_errors(ingress: Doc, services: dict[str, Doc]) -> list[str]:
    errors = []
    for rule in ingress["spec"].get("rules", []):
        for path in rule.get("http", {}).get("paths", []):
            backend = path["backend"]["service"]
            service = services.get(backend["name"])
            if service is None:
                errors.append(f"{name_of(ingress)}: no Service {backend['name']}")
                continue
            port = backend["port"]
            ports = {p.get("name") for p in service["spec"]["ports"]} | {
                p["port"] for p in service["spec"]["ports"]
            }
            if port.get("name", port.get("number")) not in ports:
                errors.append(f"{name_of(ingress)}: Service {backend['name']} has no port {port}")
    return errors


def _config_refs(pod_spec: Doc) -> Iterable[str]:
    for container in pod_spec.get("containers", []) + pod_spec.get("initContainers", []):
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                yield f"ConfigMap/{source['configMapRef']['name']}"
            if "secretRef" in source:
                yield f"Secret/{source['secretRef']['name']}"
    for volume in pod_spec.get("volumes", []):
        if "configMap" in volume:
            yield f"ConfigMap/{volume['configMap']['name']}"
        if "secret" in volume:
            yield f"Secret/{volume['secret']['secretName']}"


def cmd_manifests(args: argparse.Namespace) -> int:
    versions = args.kubernetes_version or [OLDEST_KUBERNETES, kv_utils.latest_version()]
    context = [d for path in args.context for d in load_documents(Path(path))]
    failed = False
    for path in map(Path, args.files):
        docs = load_documents(path)
        errors = sorted(
            {
                f"{name_of(d)}: {msg}"
                for v in versions
                for d in docs
                for msg in validate_document(d, v)
            }
        )
        errors += check_references(docs, context)
        kinds = Counter(d.get("kind") for d in docs)
        summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        shown = path.name if args.short_names else path
        if errors:
            failed = True
            print(f"FAIL {shown}: {len(errors)} problem(s)")
            for e in errors:
                print(f"  - {e}")
        else:
            print(
                f"ok   {shown}: {len(docs)} resources valid for Kubernetes "
                f"{' and '.join(versions)} ({summary})"
            )
    return 1 if failed else 0


class _ComposeLoader(yaml.SafeLoader):
    """SafeLoader that reads Compose's `!reset` / `!override` merge tags as plain values."""


def _plain(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


for _tag in ("!reset", "!override"):
    _ComposeLoader.add_constructor(_tag, _plain)


def cmd_compose_to_json(args: argparse.Namespace) -> int:
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for path in map(Path, args.files):
        data = yaml.load(path.read_text(), Loader=_ComposeLoader)  # a SafeLoader subclass
        (out / f"{path.stem}.json").write_text(json.dumps(data, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    manifests = sub.add_parser("manifests", help="validate rendered Kubernetes manifests")
    manifests.add_argument("files", nargs="+")
    manifests.add_argument("--context", action="append", default=[])
    manifests.add_argument(
        "--kubernetes-version", action="append", help="repeatable; default: oldest and latest"
    )
    manifests.add_argument("--short-names", action="store_true", help="print file names only")
    manifests.set_defaults(func=cmd_manifests)
    compose = sub.add_parser("compose-to-json", help="compose YAML -> JSON for check-jsonschema")
    compose.add_argument("out_dir")
    compose.add_argument("files", nargs="+")
    compose.set_defaults(func=cmd_compose_to_json)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
