#!/usr/bin/env python3
"""Checks docs/openapi.yaml, and real replies of the agent against it.

    check-openapi.py SPEC [RECORDS...]

SPEC is validated as an OpenAPI 3.1 document. Each RECORD is a JSON file
{"method": "GET", "path": "/v1/status", "status": 200, "body": {...}} holding one reply as
the agent sent it; its body must validate against the schema the document gives for that
path, method and status (or the operation's default). Exits 1 naming every reply that does not.
"""
import json
import re
import sys

import yaml
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate


def operation_for(spec, method, path):
    for template, item in spec["paths"].items():
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        if re.match(pattern, path) and method.lower() in item:
            return template, item[method.lower()]
    return None, None


def response_schema(spec, operation, status):
    responses = operation["responses"]
    response = responses.get(str(status)) or responses.get("default")
    if response is None:
        return None
    if "$ref" in response:
        response = spec["components"]["responses"][response["$ref"].split("/")[-1]]
    content = response.get("content", {}).get("application/json")
    return content["schema"] if content else {}


def main():
    with open(sys.argv[1]) as f:
        spec = yaml.safe_load(f)
    validate(spec)
    failures = 0
    for name in sys.argv[2:]:
        with open(name) as f:
            record = json.load(f)
        template, operation = operation_for(spec, record["method"], record["path"])
        if operation is None and record["status"] == 404:
            # No such route: the body is still the contract's error.
            template, operation = record["path"], {"responses": {"default": {"$ref": "#/components/responses/Error"}}}
        if operation is None:
            print(f"{name}: {record['method']} {record['path']} is not in the document")
            failures += 1
            continue
        schema = response_schema(spec, operation, record["status"])
        if schema is None:
            print(f"{name}: {record['method']} {template} has no response {record['status']}")
            failures += 1
            continue
        # The whole document is the root, so that "#/components/..." references resolve.
        root = dict(spec)
        root.update(schema)
        errors = sorted(Draft202012Validator(root).iter_errors(record["body"]), key=lambda e: list(e.path))
        for error in errors:
            where = "/".join(str(p) for p in error.path) or "(body)"
            print(f"{name}: {record['method']} {record['path']} {record['status']}: {where}: {error.message}")
            failures += 1
    print(f"{len(sys.argv) - 2} replies checked against {sys.argv[1]}, {failures} failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
