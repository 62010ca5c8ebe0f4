"""Vendor the part of KubeRay's RayJob CRD schema that scripts/launch/rayjob.yaml uses, for the
offline manifest check in tests/unit/test_launch.py (`kubectl --dry-run=client` needs a server that
knows the CRD).

    python scripts/launch/vendor_rayjob_schema.py CRD_YAML [--commit SHA] \
        > tests/unit/data/kuberay_rayjob_v1_schema.json

CRD_YAML is ray-operator/config/crd/bases/ray.io_rayjobs.yaml of github.com/ray-project/kuberay. The
whole file is 1.4 MB (the full Pod template schema, several times over). This keeps the ray.io/v1
openAPIV3Schema along the paths the manifest uses: every object on such a path keeps the names, types
and required lists of all its fields (a misspelt or misplaced field still fails the check, a field
the manifest does not use yet is still accepted), and every subtree the manifest does not enter is
cut to its type. Descriptions and CEL rules (x-kubernetes-validations) are dropped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

MANIFEST = Path(__file__).with_name("rayjob.yaml")
KEEP_SCALAR = ("type", "format", "enum", "pattern", "minimum", "maximum", "anyOf", "x-kubernetes-int-or-string")


def cut(schema: dict[str, Any]) -> dict[str, Any]:
    """A subtree the manifest does not enter: its type only (objects accept anything)."""
    out = {k: schema[k] for k in KEEP_SCALAR if k in schema}
    if schema.get("type") == "object":
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def keep(schema: dict[str, Any], instances: list[Any]) -> dict[str, Any]:
    """The schema at a place the manifest uses (`instances`: the manifest's values there)."""
    out = cut(schema)
    out.pop("x-kubernetes-preserve-unknown-fields", None)
    for k in ("required", "x-kubernetes-preserve-unknown-fields"):
        if k in schema:
            out[k] = schema[k]
    dicts = [i for i in instances if isinstance(i, dict)]
    if "properties" in schema:
        out["properties"] = {}
        for name, sub in schema["properties"].items():
            used = [d[name] for d in dicts if name in d]
            out["properties"][name] = keep(sub, used) if used else cut(sub)
    if isinstance(schema.get("additionalProperties"), dict):
        known = schema.get("properties", {})
        used = [v for d in dicts for k, v in d.items() if k not in known]
        sub = schema["additionalProperties"]
        out["additionalProperties"] = keep(sub, used) if used else cut(sub)
    if "items" in schema:
        used = [x for i in instances if isinstance(i, list) for x in i]
        out["items"] = keep(schema["items"], used) if used else cut(schema["items"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("crd", help="ray.io_rayjobs.yaml from the kuberay repository")
    p.add_argument("--commit", default="", help="the kuberay commit the CRD file comes from (recorded)")
    args = p.parse_args(argv)
    crd = yaml.safe_load(Path(args.crd).read_text())
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = v1["schema"]["openAPIV3Schema"]
    manifest = yaml.safe_load(MANIFEST.read_text())
    pruned = keep(schema, [manifest])
    pruned["properties"].pop("status", None)
    pruned = {"$comment": (f"Subset of the RayJob CRD ray.io/v1 openAPIV3Schema, ray-project/kuberay (Apache-2.0) "
                           f"ray-operator/config/crd/bases/ray.io_rayjobs.yaml"
                           f"{' at ' + args.commit if args.commit else ''}; made by "
                           f"scripts/launch/vendor_rayjob_schema.py for scripts/launch/rayjob.yaml"),
              **pruned}
    json.dump(pruned, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
