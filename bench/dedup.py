"""Benchmark: exact + near-duplicate detection over synthetic questions.

Questions are templated maths word problems with random names, items and numbers; a share of
them are planted copies (exact copies with case/punctuation changes, and near-duplicates: one
word changed or a short phrase appended). Each size runs in its own process so peak RSS is per
size. Prints one JSON object per size, e.g.::

    python bench/dedup.py --sizes 100000 1000000

Target: 1M questions in under 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from datetime import datetime, timedelta

import polars as pl

TEMPLATES = [
    "{name} buys {a} {item}s at {b} dollars each and sells them for {c} dollars each at the market on {day}. "
    "How much profit does {name} make after paying {d} dollars for the stall?",
    "A train leaves the station at {a} km per hour and another train leaves {b} minutes later at {c} km per hour "
    "on the same track. After how many hours does the second train catch up with the first one?",
    "{name} has {a} {item}s. She gives {b} of them to her brother and {c} to her sister, then buys {d} more. "
    "How many {item}s does {name} have now, and what fraction of the original amount is that?",
    "The sum of two numbers is {a} and their difference is {b}. Find both numbers and then compute the product "
    "of the larger number and {c}.",
    "A rectangle has a length of {a} cm and a width of {b} cm. If the length is increased by {c} percent and the "
    "width is decreased by {d} percent, what is the new area of the rectangle in square centimetres?",
    "In a class of {a} students, {b} percent play football and {c} students play basketball. If {d} students play "
    "both sports, how many students play neither football nor basketball?",
    "Solve for x: {a}x + {b} = {c}x - {d}. Then substitute your answer into the expression x squared minus {b} "
    "and simplify the result completely.",
    "{name} saves {a} dollars every week for {b} weeks and then spends {c} percent of the savings on a {item}. "
    "How much money is left, and how many more weeks must {name} save to reach {d} dollars?",
    "A water tank holds {a} litres. A pump fills it at {b} litres per minute while a leak drains {c} litres per "
    "minute. Starting from {d} litres, how long does it take to fill the tank?",
    "The probability that {name} wins a game is {a} out of {b}. If {name} plays {c} independent games, what is "
    "the probability of winning exactly {d} of them? Give the answer as a fraction.",
    "What is the remainder when {a} to the power of {b} is divided by {c}?",
    "Find the greatest common divisor of {a} and {b}, and the least common multiple of {c} and {d}.",
]
NAMES = ["Ava", "Ben", "Chloe", "Dmitri", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jamal", "Kofi", "Lena"]
ITEMS = ["apple", "notebook", "marble", "ticket", "pencil", "cupcake", "sticker", "book", "lamp", "shirt"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
APPENDIX = [" Show your work.", " Explain your reasoning.", " Round to the nearest whole number."]


def synthetic_questions(size: int, planted_share: float = 0.04, seed: int = 0) -> tuple[pl.DataFrame, dict]:
    """Questions plus the planted duplicates as (copy, source) index pairs.

    A copy gets its source's level and a later created_at, so the source comes first in the
    keep-first order and the copy is the one to drop.
    """
    rng = random.Random(seed)
    questions: list[str] = []
    levels: list[int] = []
    planted: dict[str, list[tuple[int, int]]] = {"exact": [], "near": []}
    for index in range(size):
        if index > 10 and rng.random() < planted_share:
            source = rng.randrange(index)
            levels.append(levels[source])
            if rng.random() < 0.5:
                questions.append(questions[source].upper().replace(".", " .  ").replace("?", "??"))
                planted["exact"].append((index, source))
            else:
                questions.append(questions[source] + rng.choice(APPENDIX))
                planted["near"].append((index, source))
            continue
        template = rng.choice(TEMPLATES)
        levels.append(rng.randint(1, 3))
        questions.append(
            template.format(
                name=rng.choice(NAMES), item=rng.choice(ITEMS), day=rng.choice(DAYS),
                a=rng.randint(2, 9999), b=rng.randint(2, 999), c=rng.randint(2, 999), d=rng.randint(2, 99),
            )
        )
    start = datetime(2025, 1, 1)
    frame = pl.DataFrame(
        {
            "question_id": [f"q{i:08d}" for i in range(size)],
            "level": levels,
            "created_at": [start + timedelta(seconds=i) for i in range(size)],
            "question": questions,
        }
    )
    return frame, planted


def shingle_jaccard(first: list[str], second: list[str], shingle: int) -> float:
    """True Jaccard similarity of two word lists' shingle sets (short texts: one whole-text shingle)."""
    def shingles(words: list[str]) -> set[tuple[str, ...]]:
        return {tuple(words[i : i + shingle]) for i in range(max(1, len(words) - shingle + 1))}

    a, b = shingles(first), shingles(second)
    return len(a & b) / len(a | b)


def run_size(size: int) -> dict:
    from synthllm.curation.dedup import exact_duplicates, near_duplicates, order_questions
    from synthllm.curation.text import word_lists
    from synthllm.settings import CurationSettings

    settings = CurationSettings()
    frame, planted = synthetic_questions(size)
    ordered = order_questions(frame)
    started, cpu_started = time.perf_counter(), time.process_time()
    exact = exact_duplicates(ordered)
    exact_s = time.perf_counter() - started
    near = near_duplicates(ordered.filter(exact["kept"]), settings)
    total_s = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_started
    dropped_exact = set(exact.filter(~pl.col("kept"))["question_id"])
    dropped_near = set(near.filter(~pl.col("kept"))["question_id"])
    words = word_lists(frame["question"])
    # planted near-duplicates whose true shingle Jaccard reaches the threshold must be found
    near_expected = {
        copy for copy, source in planted["near"]
        if shingle_jaccard(words[copy].to_list(), words[source].to_list(), settings.minhash_shingle)
        >= settings.minhash_threshold
    }
    planted_exact = {copy for copy, _ in planted["exact"]}
    ids = frame["question_id"]
    return {
        "questions": size,
        "seconds": round(total_s, 1),
        "exact_seconds": round(exact_s, 1),
        "near_seconds": round(total_s - exact_s, 1),
        "cpu_seconds": round(cpu_s, 1),  # differs from seconds when other work shares the cores
        "questions_per_second": round(size / total_s),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "exact_dropped": len(dropped_exact),
        "near_dropped": len(dropped_near),
        "planted_exact": len(planted_exact),
        "planted_exact_found": sum(ids[i] in dropped_exact for i in planted_exact),
        "planted_near": len(planted["near"]),
        "planted_near_above_threshold": len(near_expected),
        "planted_near_above_threshold_found": sum(ids[i] in dropped_near for i in near_expected),
    }


def run_datasketch_baseline(size: int) -> dict:
    """Per-question ``MinHash.bulk`` (hashing each shingle with datasketch's sha1) for comparison."""
    from datasketch import MinHash

    from synthllm.curation.text import word_lists

    frame, _ = synthetic_questions(size)
    words = word_lists(frame["question"]).to_list()
    started, cpu_started = time.perf_counter(), time.process_time()
    shingles = [[" ".join(w[i : i + 5]).encode() for i in range(max(1, len(w) - 4))] for w in words]
    MinHash.bulk(shingles, num_perm=128)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return {
        "questions": size,
        "datasketch_bulk_minhash_seconds": round(seconds, 1),
        "datasketch_bulk_minhash_cpu_seconds": round(cpu_seconds, 1),
        "extrapolated_1m_cpu_seconds": round(cpu_seconds * 1_000_000 / size),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--datasketch-baseline", type=int, default=0, metavar="N",
                        help="also time per-question datasketch MinHash.bulk on N questions")
    parser.add_argument("--single", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--baseline-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        result = run_datasketch_baseline(args.single) if args.baseline_only else run_size(args.single)
        print(json.dumps(result))
        return
    runs = [[str(size)] for size in args.sizes]
    if args.datasketch_baseline:
        runs.append([str(args.datasketch_baseline), "--baseline-only"])
    for run in runs:
        completed = subprocess.run([sys.executable, __file__, "--single", *run], capture_output=True, text=True)
        if completed.returncode != 0:
            sys.stderr.write(completed.stderr)
            raise SystemExit(completed.returncode)
        print(completed.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
