#!/usr/bin/env python3
"""Writes deploy/kubernetes/base/prometheusrule.yaml from deploy/prometheus/ipm-stream.rules.yml.

The plain rules file is the source. Its `groups:` block is copied verbatim, comments and all,
under the PrometheusRule's `spec:`, so both forms hold the same rules by construction.

    python3 deploy/prometheus/generate_prometheusrule.py          # rewrite the PrometheusRule
    python3 deploy/prometheus/generate_prometheusrule.py --check  # fail if it is out of date
"""

import argparse
import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/ipm-stream.rules.yml"
TARGET = ROOT / "deploy/kubernetes/base/prometheusrule.yaml"

HEADER = """\
# Generated from deploy/prometheus/ipm-stream.rules.yml by
# deploy/prometheus/generate_prometheusrule.py; edit the rules file, not this one.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: ipm-stream
  labels:
    app.kubernetes.io/name: ipm-stream
    app.kubernetes.io/component: alerting
spec:
"""


def render():
    text = RULES.read_text()
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    body = "\n".join(("  " + line) if line.strip() else "" for line in lines[start:])
    rendered = HEADER + body + "\n"
    # The copy must mean the same as the source, not just look like it.
    if yaml.safe_load(rendered)["spec"]["groups"] != yaml.safe_load(text)["groups"]:
        sys.exit("the rendered PrometheusRule does not hold the same groups as the rules file")
    return rendered


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the PrometheusRule differs from what would be written")
    args = parser.parse_args()
    rendered = render()
    if args.check:
        if not TARGET.exists() or TARGET.read_text() != rendered:
            sys.exit(f"{TARGET.relative_to(ROOT)} is out of date: run "
                     "deploy/prometheus/generate_prometheusrule.py")
        return
    TARGET.write_text(rendered)


if __name__ == "__main__":
    main()
