"""Benchmark: CPU per reply of schema validation, jsonschema's ``is_valid`` vs the client's
``SchemaCheck`` (fastjsonschema-generated code), on a valid level-1 reply. Prints one JSON object."""

from __future__ import annotations

import argparse
import json
import time

import jsonschema

from synthllm.engines.client import SchemaCheck
from synthllm.prompts import load_prompt
from synthllm.stages.common import bounded_schema


def per_call_us(check, value, n: int) -> float:
    started = time.process_time()
    for _ in range(n):
        check(value)
    return (time.process_time() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000, help="validations per variant")
    args = parser.parse_args()
    schema = bounded_schema(load_prompt("level1_questions"), {"questions": 5})
    reply = {"suitable": True, "questions": [
        {"question": f"What is {i} + {i}?", "type": "new", "school_level": "middle school"} for i in range(5)]}
    full = jsonschema.validators.validator_for(schema)(schema)
    check = SchemaCheck(schema)
    assert full.is_valid(reply) and check.mismatch(reply) is None
    slow, fast = per_call_us(full.is_valid, reply, args.n), per_call_us(check.mismatch, reply, args.n)
    print(json.dumps({"benchmark": "schema_check", "replies": args.n, "jsonschema_is_valid_cpu_us": round(slow, 1),
                      "schema_check_cpu_us": round(fast, 1), "speed_up": round(slow / fast, 1)}))


if __name__ == "__main__":
    main()
