"""Benchmark: exact + near-duplicate detection over synthetic questions, three ways side by side.

Questions are templated maths word problems with random names, items and numbers; a share of
them are planted copies (exact copies with case/punctuation changes, and near-duplicates: a short
phrase appended). The same questions, in the same keep-first order, go through:

* ``synthllm``: :func:`synthllm.curation.dedup.dedup` (banded LSH in numpy, exact Jaccard check)
* ``rensa``: rensa's ``RMinHash`` + ``RMinHashLSH`` (Rust), estimated-Jaccard check
* ``datasketch``: datasketch ``MinHashLSH`` over the same signatures, exact Jaccard check (the
  previous synthllm dedup)

Each (size, method) runs in its own process, so peak RSS is per run; the input is generated once
per size into a Parquet file by another process. Prints one JSON object::

    python bench/dedup.py --sizes 200000 1000000 --methods synthllm rensa datasketch

Targets: 10M questions in <= 10 min on 2 cores and <= 8 GB peak RSS; planted near-duplicates
found >= 96 %.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

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
    """True Jaccard similarity of two token lists' shingle sets (short texts: one whole-text shingle)."""
    def shingles(words: list[str]) -> set[tuple[str, ...]]:
        return {tuple(words[i : i + shingle]) for i in range(max(1, len(words) - shingle + 1))}

    a, b = shingles(first), shingles(second)
    return len(a & b) / len(a | b)


def generate(size: int, folder: Path) -> None:
    """Questions and planted pairs as Parquet (run in its own process: the generator is big)."""
    frame, planted = synthetic_questions(size)
    frame.write_parquet(folder / "questions.parquet")
    pairs = [(kind, copy, source) for kind, found in planted.items() for copy, source in found]
    pl.DataFrame(pairs, schema=["kind", "copy", "source"], orient="row").write_parquet(folder / "planted.parquet")


def synthllm_dropped(frame: pl.DataFrame, settings) -> tuple[set[str], set[str]]:
    from synthllm.curation.dedup import dedup

    rows = dedup(frame, settings).filter(~pl.col("kept"))
    return (set(rows.filter(pl.col("check_name") == "exact_dup")["question_id"]),
            set(rows.filter(pl.col("check_name") == "near_dup")["question_id"]))


def _ordered_shingles(frame: pl.DataFrame, settings):
    """Exact duplicates the synthllm way, then each survivor's signature and shingle set, in keep-first order."""
    from synthllm.curation.dedup import MinHasher, content_order, first_of_equal
    from synthllm.curation.text import WordBatch

    words = WordBatch.from_texts(frame["question"])
    order = content_order(frame, words.text_hashes())
    first = first_of_equal(words.text_hashes()[order])
    exact = set(frame["question_id"].gather(order[first < np.arange(len(order))]))
    survivors = order[first == np.arange(len(order))]
    hasher = MinHasher(num_perm=settings.minhash_num_perm, shingle=settings.minhash_shingle)
    return exact, survivors, WordBatch.from_texts(frame["question"].gather(survivors)), hasher


def datasketch_dropped(frame: pl.DataFrame, settings) -> tuple[set[str], set[str]]:
    """The previous synthllm near-dup: datasketch MinHashLSH, exact Jaccard of shingle sets."""
    from datasketch import LeanMinHash, MinHashLSH

    from synthllm.curation.dedup import LSH_WEIGHTS, MINHASH_SCHEME

    exact, survivors, words, hasher = _ordered_shingles(frame, settings)
    hashes, owners = hasher.shingle_hashes(words)
    signatures = hasher.signatures_of(hashes, owners, len(words))
    order = np.lexsort((hashes, owners))
    sets = np.split(hashes[order], np.searchsorted(owners[order], np.arange(1, len(words))))
    sets = [np.unique(s) for s in sets]
    lsh = MinHashLSH(threshold=settings.minhash_threshold, num_perm=settings.minhash_num_perm, weights=LSH_WEIGHTS)
    ids = frame["question_id"].gather(survivors).to_list()
    near = set()
    for row in range(len(words)):
        minhash = LeanMinHash(seed=hasher.seed, hashvalues=signatures[row], scheme=MINHASH_SCHEME)
        similar = False
        for candidate in lsh.query(minhash):
            shared = np.intersect1d(sets[row], sets[candidate], assume_unique=True).size
            if shared / (sets[row].size + sets[candidate].size - shared) >= settings.minhash_threshold:
                similar = True
                break
        if similar:
            near.add(ids[row])
        else:
            lsh.insert(row, minhash, check_duplication=False)
    return exact, near


def rensa_dropped(frame: pl.DataFrame, settings) -> tuple[set[str], set[str]]:
    """rensa RMinHash + RMinHashLSH over the same shingles, rensa's estimated Jaccard as the check."""
    from rensa import RMinHash, RMinHashLSH

    from synthllm.curation.text import word_lists

    exact, survivors, _, _ = _ordered_shingles(frame, settings)
    bands = RENSA_BANDS  # rensa needs num_perm divisible by the band count: 16 x 8 (ours: 14 x 9)
    lsh = RMinHashLSH(settings.minhash_threshold, settings.minhash_num_perm, bands)
    size = settings.minhash_shingle
    ids = frame["question_id"].gather(survivors).to_list()
    minhashes = []
    near = set()
    for row, words in enumerate(word_lists(frame["question"].gather(survivors)).to_list()):
        minhash = RMinHash(settings.minhash_num_perm, 42)
        minhash.update([" ".join(words[i : i + size]) for i in range(max(1, len(words) - size + 1))])
        minhashes.append(minhash)
        if any(minhash.jaccard(minhashes[c]) >= settings.minhash_threshold for c in lsh.query(minhash)):
            near.add(ids[row])
        else:
            lsh.insert(row, minhash)
    return exact, near


RENSA_BANDS = 16
METHODS = {"synthllm": synthllm_dropped, "rensa": rensa_dropped, "datasketch": datasketch_dropped}


def run_method(method: str, folder: Path) -> dict:
    from synthllm.curation.text import word_lists
    from synthllm.settings import CurationSettings

    settings = CurationSettings()
    frame = pl.read_parquet(folder / "questions.parquet")
    started, cpu_started = time.perf_counter(), time.process_time()
    exact, near = METHODS[method](frame, settings)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    peak_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    planted = pl.read_parquet(folder / "planted.parquet")
    ids = frame["question_id"]
    dropped = exact | near
    near_pairs = planted.filter(pl.col("kind") == "near")
    words = word_lists(frame["question"].gather(pl.concat([near_pairs["copy"], near_pairs["source"]]))).to_list()
    count = near_pairs.height
    # planted near-duplicates whose true shingle Jaccard reaches the threshold must be found:
    # found = the pair does not survive whole (which member is kept is the content order's choice)
    above = [
        (copy, source) for i, (copy, source) in enumerate(near_pairs.select("copy", "source").iter_rows())
        if shingle_jaccard(words[i], words[count + i], settings.minhash_shingle) >= settings.minhash_threshold
    ]
    found_near = sum(ids[c] in dropped or ids[s] in dropped for c, s in above)
    exact_pairs = planted.filter(pl.col("kind") == "exact").select("copy", "source").rows()
    return {
        "method": method,
        "questions": frame.height,
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        "questions_per_second": round(frame.height / seconds),
        "peak_rss_mb": peak_mb,
        "exact_dropped": len(exact),
        "near_dropped": len(near),
        "planted_exact": len(exact_pairs),
        "planted_exact_found": sum(ids[c] in exact or ids[s] in exact for c, s in exact_pairs),
        "planted_near": count,
        "planted_near_above_threshold": len(above),
        "planted_near_above_threshold_found": found_near,
        "near_recall": round(found_near / max(len(above), 1), 4),
    }


def _run(arguments: list[str], timeout: float | None) -> dict | None:
    completed = subprocess.run([sys.executable, __file__, *arguments], capture_output=True, text=True, timeout=timeout)
    if completed.returncode != 0:
        sys.stderr.write(completed.stderr)
        raise SystemExit(completed.returncode)
    return json.loads(completed.stdout) if completed.stdout.strip() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--max-baseline-size", type=int, default=1_000_000,
                        help="run rensa and datasketch only up to this many questions (they hold an index in memory)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per run")
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=list(METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate(args.sizes[0], args.generate)
        return
    if args.method:
        print(json.dumps(run_method(args.method, args.folder)))
        return
    results = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as folder:
            _run(["--generate", folder, "--sizes", str(size)], args.timeout)
            for method in args.methods:
                if method != "synthllm" and size > args.max_baseline_size:
                    continue
                results.append(_run(["--method", method, "--folder", folder], args.timeout))
    print(json.dumps({"runs": results}))


if __name__ == "__main__":
    main()
