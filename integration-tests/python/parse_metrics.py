"""Parses Prometheus text (stdin) with the official Python client's parser and prints
every sample as JSON: [{"family", "type", "name", "labels", "value"}, ...].

A parse error exits non-zero with the parser's message: the integration tests use this
to prove /metrics is valid exposition format, not just text that looks like it.
"""
import json
import math
import sys

from prometheus_client.parser import text_string_to_metric_families


def main():
    text = sys.stdin.read()
    samples = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            value = sample.value
            if math.isinf(value) or math.isnan(value):
                value = str(value)
            samples.append(
                {
                    "family": family.name,
                    "type": family.type,
                    "name": sample.name,
                    "labels": sample.labels,
                    "value": value,
                }
            )
    json.dump(samples, sys.stdout)


if __name__ == "__main__":
    main()
