#!/usr/bin/env python3
"""Validate rendered Kubernetes manifests offline, reporting every error.

Each YAML document is checked against the strict JSON schema of its kind
(unknown fields are errors) that the `kubernetes-validate` package bundles,
with `jsonschema`, so all errors of a document are listed, not only the first.
A document whose kind has no schema is an error too, never a silent pass.

On top of the schemas, checks that the API server would make, or that show a
chart bug the schemas cannot see:
  - duplicate mapping keys (a template that emits a key twice);
  - object names, label keys and values, container and port names;
  - a workload's selector matches its own pod template;
  - every Service, PodDisruptionBudget, HorizontalPodAutoscaler and
    ServiceMonitor finds its target among the documents given, named Service
    target ports exist on the selected pods;
  - keys read from a Secret that is among the documents exist in it.

Usage:
  validate_manifests.py [--kube-version 1.33.0] [--schema-dir DIR]... [--skip-schema KIND]... FILE...
  ("-" reads standard input; all files are checked together.)
--schema-dir adds a folder of extra schemas named like the bundled ones
(<kind>-<group>-<version>.json, e.g. servicemonitor-monitoring-v1.json).

Exit status: 0 when every document passed, 1 otherwise, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

try:
    import jsonschema
    import yaml
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012
except ImportError as exc:  # pragma: no cover - environment problem
    sys.exit(f"validate_manifests: missing Python package ({exc}); "
             "install jsonschema and kubernetes-validate")

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


# --------------------------------------------------------------------------
# Loading


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last."""

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r}", key_node.start_mark)
            seen[key] = True
        return super().construct_mapping(node, deep=deep)


@dataclass
class Doc:
    source: str
    index: int
    body: dict

    @property
    def kind(self) -> str:
        return str(self.body.get("kind", "?"))

    @property
    def name(self) -> str:
        meta = self.body.get("metadata") or {}
        return str(meta.get("name", "?")) if isinstance(meta, dict) else "?"

    @property
    def where(self) -> str:
        return f"{self.source} doc {self.index}: {self.kind}/{self.name}"


@dataclass
class Report:
    errors: list[str] = field(default_factory=list)

    def error(self, where: str, path: str, message: str) -> None:
        self.errors.append(f"ERROR {where}: {path or '(root)'}: {message}")


def load_documents(paths: list[str], report: Report) -> list[Doc]:
    docs: list[Doc] = []
    for path in paths:
        source = "<stdin>" if path == "-" else path
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text()
        except OSError as exc:
            report.error(source, "", f"cannot read: {exc}")
            continue
        try:
            bodies = list(yaml.load_all(text, Loader=StrictLoader))
        except yaml.YAMLError as exc:
            report.error(source, "", f"invalid YAML: {exc}")
            continue
        for i, body in enumerate(bodies, start=1):
            if body is None:
                continue  # empty document, e.g. a template that rendered nothing
            if not isinstance(body, dict) or "kind" not in body or "apiVersion" not in body:
                report.error(f"{source} doc {i}", "", "not a Kubernetes object (needs apiVersion and kind)")
                continue
            docs.append(Doc(source, i, body))
    return docs


# --------------------------------------------------------------------------
# Schemas


def bundled_schema_dir(kube_version: str) -> Path:
    import kubernetes_validate  # noqa: PLC0415 - only needed here

    root = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    wanted = root / f"v{kube_version.lstrip('v')}-local-strict"
    if not wanted.is_dir():
        have = sorted(p.name for p in root.iterdir() if p.name.endswith("-local-strict"))
        sys.exit(f"validate_manifests: no strict schemas for Kubernetes {kube_version} in {root} "
                 f"(have: {', '.join(have)})")
    return wanted


def schema_file_name(api_version: str, kind: str) -> str:
    # Same naming as kubernetes-validate: "apps/v1" -> apps-v1,
    # "rbac.authorization.k8s.io/v1" -> rbac-v1, "v1" -> v1.
    if "/" in api_version:
        group, version = api_version.split("/", 1)
        api = f"{group.split('.')[0]}-{version}"
    else:
        api = api_version
    return f"{kind.lower()}-{api}.json"


class Schemas:
    def __init__(self, dirs: list[Path]):
        self.dirs = dirs
        definitions = json.loads((dirs[0] / "_definitions.json").read_text())
        self.registry: Registry = Resource.from_contents(definitions) @ Registry()
        self.cache: dict[str, Any] = {}

    def validator(self, api_version: str, kind: str):
        name = schema_file_name(api_version, kind)
        if name not in self.cache:
            self.cache[name] = None
            for d in self.dirs:
                path = d / name
                if path.is_file():
                    schema = json.loads(path.read_text())
                    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
                    resource = Resource.from_contents(schema, default_specification=DRAFT202012)
                    self.cache[name] = cls(schema, registry=resource @ self.registry)
                    break
        return self.cache[name]


def json_path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def short(message: str, limit: int = 400) -> str:
    return message if len(message) <= limit else message[:limit] + " …"


def check_schema(doc: Doc, schemas: Schemas, report: Report) -> None:
    validator = schemas.validator(str(doc.body["apiVersion"]), doc.kind)
    if validator is None:
        report.error(doc.where, "", f"no schema for {doc.body['apiVersion']} {doc.kind} "
                     f"(looked for {schema_file_name(str(doc.body['apiVersion']), doc.kind)} in "
                     f"{', '.join(str(d) for d in schemas.dirs)})")
        return
    errors = sorted(validator.iter_errors(doc.body), key=lambda e: [str(p) for p in e.absolute_path])
    for err in errors:
        message = err.message
        if err.context:  # oneOf/anyOf: the closest branch says most
            best = jsonschema.exceptions.best_match(err.context)
            message = f"{message} ({best.message} at {json_path(best.absolute_path) or 'this value'})"
        report.error(doc.where, json_path(err.absolute_path), short(message))


# --------------------------------------------------------------------------
# Checks the schemas cannot make


def pod_spec(body: dict) -> dict | None:
    kind = body.get("kind")
    spec = body.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind in WORKLOAD_KINDS:
        return ((spec.get("template") or {}).get("spec")) or {}
    if kind == "CronJob":
        return (((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
    return None


def pod_labels(body: dict) -> dict:
    if body.get("kind") == "Pod":
        return ((body.get("metadata") or {}).get("labels")) or {}
    return (((body.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}


def selector_matches(selector: dict, labels: dict) -> bool:
    """matchLabels / matchExpressions semantics of a LabelSelector."""
    if not selector:
        return False  # an empty selector in these objects selects nothing useful
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def check_names(doc: Doc, report: Report) -> None:
    meta = doc.body.get("metadata")
    if not isinstance(meta, dict):
        report.error(doc.where, "metadata", "missing")
        return
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        report.error(doc.where, "metadata.name", "missing")
    elif doc.kind == "Service":
        if len(name) > 63 or not DNS1035_LABEL.match(name):
            report.error(doc.where, "metadata.name", f"{name!r} is not a DNS-1035 label (Service names: "
                         "lower case, start with a letter, at most 63 characters)")
    elif len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
        report.error(doc.where, "metadata.name", f"{name!r} is not a DNS-1123 subdomain")
    elif doc.kind in WORKLOAD_KINDS | {"Pod"} and len(name) > 63:
        report.error(doc.where, "metadata.name", f"{name!r} is longer than 63 characters")

    def labels_at(labels: Any, path: str) -> None:
        if not isinstance(labels, dict):
            return
        for key, value in labels.items():
            key_s = str(key)
            prefix, _, lname = key_s.rpartition("/")
            if (prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix))) \
                    or len(lname) > 63 or not LABEL_NAME.match(lname):
                report.error(doc.where, f"{path}.{key_s}", "invalid label key")
            if not isinstance(value, str):
                report.error(doc.where, f"{path}.{key_s}", f"label value must be a string, got {value!r}")
            elif len(value) > 63 or not LABEL_VALUE.match(value):
                report.error(doc.where, f"{path}.{key_s}", f"invalid label value {value!r}")

    labels_at(meta.get("labels"), "metadata.labels")
    spec = doc.body.get("spec") or {}
    if doc.kind in WORKLOAD_KINDS:
        labels_at(pod_labels(doc.body), "spec.template.metadata.labels")
        sel = spec.get("selector") or {}
        if doc.kind != "Job" and not selector_matches(sel, pod_labels(doc.body)):
            report.error(doc.where, "spec.selector", "does not match the pod template's labels")

    ps = pod_spec(doc.body)
    if ps is None:
        return
    base = "spec" if doc.kind == "Pod" else "spec.template.spec"
    for group in ("initContainers", "containers"):
        for i, c in enumerate(ps.get(group) or []):
            cname = c.get("name", "")
            if len(cname) > 63 or not DNS1123_LABEL.match(cname):
                report.error(doc.where, f"{base}.{group}[{i}].name", f"{cname!r} is not a DNS-1123 label")
            for j, port in enumerate(c.get("ports") or []):
                pname = port.get("name")
                if pname is not None and (len(pname) > 15 or not IANA_SVC_NAME.match(pname)
                                          or "--" in pname or not re.search("[a-z]", pname)):
                    report.error(doc.where, f"{base}.{group}[{i}].ports[{j}].name",
                                 f"{pname!r} is not an IANA service name (max 15, a-z 0-9 -)")


def check_references(docs: list[Doc], report: Report) -> None:
    workloads = [d for d in docs if d.kind in WORKLOAD_KINDS - {"Job"}]
    secrets = {d.name: d for d in docs if d.kind == "Secret"}
    services = [d for d in docs if d.kind == "Service"]

    for d in docs:
        spec = d.body.get("spec") or {}
        if d.kind == "Service" and spec.get("selector") and workloads:
            targets = [w for w in workloads if selector_matches({"matchLabels": spec["selector"]}, pod_labels(w.body))]
            if not targets:
                report.error(d.where, "spec.selector", "selects no pods of the workloads rendered here")
            port_names = {p.get("name") for w in targets for c in (pod_spec(w.body) or {}).get("containers") or []
                          for p in c.get("ports") or []}
            for i, p in enumerate(spec.get("ports") or []):
                tp = p.get("targetPort")
                if targets and isinstance(tp, str) and tp not in port_names:
                    report.error(d.where, f"spec.ports[{i}].targetPort", f"no container port named {tp!r}")
        if d.kind == "PodDisruptionBudget" and workloads:
            if not any(selector_matches(spec.get("selector") or {}, pod_labels(w.body)) for w in workloads):
                report.error(d.where, "spec.selector", "selects no pods of the workloads rendered here")
        if d.kind == "HorizontalPodAutoscaler":
            ref = spec.get("scaleTargetRef") or {}
            if not any(w.kind == ref.get("kind") and w.name == ref.get("name") for w in workloads):
                report.error(d.where, "spec.scaleTargetRef", f"no {ref.get('kind')}/{ref.get('name')} rendered here")
            elif any(w.kind == ref.get("kind") and w.name == ref.get("name")
                     and (w.body.get("spec") or {}).get("replicas") is not None for w in workloads):
                report.error(d.where, "spec.scaleTargetRef", "target also sets spec.replicas: every "
                             "`helm upgrade` would reset the HPA's count")
        if d.kind == "ServiceMonitor":
            sel = spec.get("selector") or {}
            chosen = [s for s in services if selector_matches(sel, (s.body.get("metadata") or {}).get("labels") or {})]
            if not chosen:
                report.error(d.where, "spec.selector", "selects no Service rendered here")
            names = {p.get("name") for s in chosen for p in (s.body.get("spec") or {}).get("ports") or []}
            for i, ep in enumerate(spec.get("endpoints") or []):
                if chosen and ep.get("port") and ep["port"] not in names:
                    report.error(d.where, f"spec.endpoints[{i}].port", f"no Service port named {ep['port']!r}")

        ps = pod_spec(d.body)
        if ps is None:
            continue
        base = "spec" if d.kind == "Pod" else "spec.template.spec"

        def secret_keys(name: str) -> set[str] | None:
            s = secrets.get(name)
            if s is None:
                return None  # an existing Secret outside the chart: cannot be checked
            return set((s.body.get("data") or {}).keys()) | set((s.body.get("stringData") or {}).keys())

        for group in ("initContainers", "containers"):
            for i, c in enumerate(ps.get(group) or []):
                for j, env in enumerate(c.get("env") or []):
                    ref = ((env.get("valueFrom") or {}).get("secretKeyRef")) or {}
                    keys = secret_keys(ref.get("name", "")) if ref else None
                    if keys is not None and ref.get("key") not in keys and not ref.get("optional"):
                        report.error(d.where, f"{base}.{group}[{i}].env[{j}]",
                                     f"Secret {ref.get('name')!r} has no key {ref.get('key')!r}")
                mounts = {m.get("name") for m in c.get("volumeMounts") or []}
                volumes = {v.get("name") for v in ps.get("volumes") or []}
                for m in sorted(mounts - volumes, key=str):
                    report.error(d.where, f"{base}.{group}[{i}].volumeMounts", f"no volume named {m!r}")
        for k, v in enumerate(ps.get("volumes") or []):
            sec = v.get("secret") or {}
            keys = secret_keys(sec.get("secretName", "")) if sec else None
            for item in sec.get("items") or []:
                if keys is not None and item.get("key") not in keys:
                    report.error(d.where, f"{base}.volumes[{k}].secret.items",
                                 f"Secret {sec.get('secretName')!r} has no key {item.get('key')!r}")


# --------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kube-version", default="1.33.0", help="Kubernetes version of the schemas (default 1.33.0)")
    ap.add_argument("--schema-dir", action="append", default=[], type=Path,
                    help="extra folder of <kind>-<group>-<version>.json schemas (repeatable)")
    ap.add_argument("--skip-schema", action="append", default=[], metavar="KIND",
                    help="check documents of this kind without a schema (only when none can be had; "
                         "the other checks still run; repeatable)")
    ap.add_argument("--no-cross-checks", action="store_true",
                    help="skip the checks between documents (for a partial set)")
    ap.add_argument("-q", "--quiet", action="store_true", help="print errors and the summary only")
    ap.add_argument("files", nargs="+", help="YAML files, '-' for standard input")
    args = ap.parse_args(argv)

    report = Report()
    docs = load_documents(args.files, report)
    schemas = Schemas([bundled_schema_dir(args.kube_version), *args.schema_dir])
    skipped = 0
    for doc in docs:
        before = len(report.errors)
        if doc.kind in args.skip_schema:
            skipped += 1
        else:
            check_schema(doc, schemas, report)
        check_names(doc, report)
        if not args.quiet:
            status = "ok" if len(report.errors) == before else "FAILED"
            if doc.kind in args.skip_schema:
                status += " (schema skipped on request)"
            print(f"  {status:6} {doc.body['apiVersion']} {doc.kind}/{doc.name}")
    if not args.no_cross_checks:
        check_references(docs, report)

    for line in report.errors:
        print(line)
    kinds = sorted({d.kind for d in docs})
    print(f"validate_manifests: {len(docs)} documents ({', '.join(kinds) or 'none'}) against Kubernetes "
          f"{args.kube_version} strict schemas: {len(report.errors)} error(s)"
          + (f", {skipped} without schema (--skip-schema)" if skipped else ""))
    if not docs:
        print("validate_manifests: ERROR no documents found")
        return 1
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
