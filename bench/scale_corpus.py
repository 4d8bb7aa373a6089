"""A generated maths-like corpus for the scale benchmarks: deterministic, any size, with topic structure.

Documents of one topic share most of their words, so the concept graph has communities, as a real
corpus's does. ``bench/pipeline_scale.py`` and ``bench/s3_reads.py`` run their flows on it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ROOTS = ("algebra", "matrix", "vector", "integral", "derivative", "limit", "series", "sequence", "function",
         "polynomial", "equation", "inequality", "triangle", "circle", "parabola", "ellipse", "hyperbola", "angle",
         "radius", "tangent", "secant", "cosine", "sine", "logarithm", "exponent", "fraction", "decimal",
         "percent", "ratio", "proportion", "probability", "variance", "median", "average", "graph", "vertex",
         "edge", "prime", "divisor", "multiple", "factor", "remainder", "modulus", "congruence", "permutation",
         "combination", "binomial", "theorem", "lemma", "proof", "induction", "symmetry", "rotation",
         "reflection", "translation", "volume", "surface", "perimeter", "area", "length", "slope",
         "intercept", "asymptote", "domain", "range", "inverse", "composition", "determinant", "eigenvalue",
         "gradient", "optimum", "minimum", "maximum", "convexity", "interval", "boundary", "rational",
         "irrational", "complex", "integer", "quotient", "product", "summation", "recursion", "geometric",
         "arithmetic", "harmonic", "quadratic", "cubic", "linear", "matrix")
PREFIXES = ("", "hyper", "poly", "semi", "quasi", "multi", "sub", "co", "bi", "tri", "para", "ortho")
VOCABULARY = sorted({f"{p}{r}" for p in PREFIXES for r in ROOTS})
TOPICS = 400  # documents of one topic share most of their words: the concept graph has structure


def document_text(index: int) -> str:
    """A deterministic maths-like document of 1-3k characters: definitions, equations, worked examples."""
    rng = random.Random(index)
    topic = index % TOPICS
    words = [VOCABULARY[(topic * 17 + k * 7) % len(VOCABULARY)] for k in range(24)] + rng.sample(VOCABULARY, 8)
    target = rng.randint(1000, 3000)
    parts: list[str] = []
    while sum(map(len, parts)) < target:
        a, b, c = rng.sample(words, 3)
        x, y, z = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
        parts.append(rng.choice((
            f"The {a} of a {b} is defined through its {c}.",
            f"Solve {z}x + {x} = {y} for x, then check the {a} of the result.",
            f"Example: a {a} with {b} {x} and {c} {y} has {x * y} in total.",
            f"Theorem: every {a} admits a {b} whenever the {c} is bounded by {z}.",
            f"If f(x) = {z}x^2 - {x}x + {y}, the {a} at x = {z} equals {z * z * z - x * z + y}.",
        )))
    return " ".join(parts)


def write_corpus(path: Path, documents: int) -> None:
    with path.open("w") as out:
        for index in range(documents):
            out.write(json.dumps({"id": f"doc-{index:07d}", "text": document_text(index)}) + "\n")
