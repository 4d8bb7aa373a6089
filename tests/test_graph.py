"""Level-3 concept graph: co-occurrence counts, weighted walks, grounding."""

from __future__ import annotations

from collections import Counter

import numpy as np
import polars as pl
import pytest
from scipy import stats

from synthllm.graph import (
    KC_KC,
    TOPIC_KC,
    TOPIC_TOPIC,
    ConceptGraph,
    assign_subsets,
    build_graphs,
    sample_combinations,
    split_budget,
)
from synthllm.grounding import InvertedIndex, ground, tie_order
from synthllm.settings import GraphSettings, Settings
from synthllm.stages.graph import build_concept_graph
from synthllm.store import Store


def links_frame(rows: list[tuple[str, str, str | None]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"doc_id": pl.String, "topic_id": pl.String, "kc_id": pl.String}, orient="row")


# d1: topics A, B; KCs x, y.   d2: topic A; KCs x, z.   d3: topics B, C; KC z.
HAND_BUILT = links_frame([
    ("d1", "topic:A", None), ("d1", "topic:A", "kc:x"), ("d1", "topic:A", "kc:y"),
    ("d1", "topic:B", None), ("d1", "topic:B", "kc:y"),
    ("d1", "topic:B", "kc:y"),  # a repeated link must not count twice
    ("d2", "topic:A", None), ("d2", "topic:A", "kc:x"), ("d2", "topic:A", "kc:z"),
    ("d3", "topic:B", None), ("d3", "topic:C", None), ("d3", "topic:C", "kc:z"),
    ("d4", "topic:D", None),  # a topic alone in its document co-occurs with nothing
])


def edge_set(graph: ConceptGraph) -> set[tuple[str, str, str, int]]:
    return {(r["kind"], r["src"], r["dst"], r["count"]) for r in graph.edges_frame().iter_rows(named=True)}


def test_counts_and_subgraphs_on_a_hand_built_corpus() -> None:
    (graph,) = build_graphs(HAND_BUILT, GraphSettings())
    # Counted by hand: number of documents holding both ends.
    assert edge_set(graph) == {
        (TOPIC_TOPIC, "topic:A", "topic:B", 1),  # d1
        (TOPIC_TOPIC, "topic:B", "topic:C", 1),  # d3
        (TOPIC_KC, "topic:A", "kc:x", 2),  # d1, d2
        (TOPIC_KC, "topic:A", "kc:y", 1),  # d1
        (TOPIC_KC, "topic:A", "kc:z", 1),  # d2
        (TOPIC_KC, "topic:B", "kc:x", 1),  # d1: same document, whichever topic the model put x under
        (TOPIC_KC, "topic:B", "kc:y", 1),  # d1
        (TOPIC_KC, "topic:B", "kc:z", 1),  # d3
        (TOPIC_KC, "topic:C", "kc:z", 1),  # d3
        (KC_KC, "kc:x", "kc:y", 1),  # d1
        (KC_KC, "kc:x", "kc:z", 1),  # d2
    }
    assert graph.topics.to_list() == ["topic:A", "topic:B", "topic:C"]  # D has no edge
    assert graph.kcs.to_list() == ["kc:x", "kc:y", "kc:z"]
    frame = graph.edges_frame()
    assert frame.columns == ["subset", "kind", "src", "dst", "count"]
    assert frame["subset"].unique().to_list() == [0]


def test_networkx_view_matches_the_counts() -> None:
    (graph,) = build_graphs(HAND_BUILT, GraphSettings())
    nx_graph = graph.to_networkx()
    assert nx_graph.number_of_nodes() == 6
    assert nx_graph.number_of_edges() == 11
    assert nx_graph["topic:A"]["kc:x"] == {"kind": TOPIC_KC, "count": 2}
    assert nx_graph.nodes["kc:z"]["kind"] == "kc"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_connectivity_from_the_arrays_matches_networkx(seed: int) -> None:
    """Components and density for the stage's summary come from the arrays, as networkx counts them."""
    import networkx as nx

    # two corpora with disjoint vocabularies in one subset: at least two components
    left = random_corpus(40, seed=seed, n_topics=6, n_kcs=15)
    right = random_corpus(25, seed=seed + 10, n_topics=5, n_kcs=12).with_columns(
        pl.col("doc_id") + "r", pl.col("topic_id") + "r", pl.col("kc_id") + "r")
    (graph,) = build_graphs(pl.concat([left, right]), GraphSettings(subset_size=1000))
    view = graph.to_networkx()
    components, density = graph.connectivity()
    assert components == nx.number_connected_components(view) >= 2
    assert density == pytest.approx(nx.density(view))


def test_links_are_validated() -> None:
    with pytest.raises(ValueError, match="missing"):
        build_graphs(HAND_BUILT.drop("kc_id"), GraphSettings())
    with pytest.raises(ValueError, match="topic_id"):
        build_graphs(links_frame([("d1", None, "kc:x")]), GraphSettings())  # type: ignore[list-item]


def random_corpus(n_docs: int, seed: int, n_topics: int = 12, n_kcs: int = 40) -> pl.DataFrame:
    """Skewed random concept sets: a few frequent topics and KCs, many rare ones."""
    rng = np.random.default_rng(seed)
    rows = []
    for doc in range(n_docs):
        for topic in set(rng.zipf(1.6, rng.integers(1, 4)) % n_topics):
            rows.append((f"doc{doc:05d}", f"topic:t{topic}", None))
            for kc in set(rng.zipf(1.4, rng.integers(0, 6)) % n_kcs):
                rows.append((f"doc{doc:05d}", f"topic:t{topic}", f"kc:k{kc}"))
    return links_frame(rows)


def test_subsets_partition_the_documents_and_their_counts_add_up() -> None:
    links = random_corpus(300, seed=3)
    settings = GraphSettings(subset_size=100)
    parts = assign_subsets(links, settings.subset_size)
    per_doc = parts.group_by("doc_id").agg(pl.col("subset").n_unique())
    assert per_doc["subset"].max() == 1  # every document in exactly one subset
    assert sorted(parts["subset"].unique().to_list()) == [0, 1, 2]
    assert assign_subsets(links.reverse(), 100).sort("doc_id", "topic_id", "kc_id").equals(
        parts.sort("doc_id", "topic_id", "kc_id"))  # the hash, not the row order, decides
    graphs = build_graphs(links, settings)
    assert [g.subset for g in graphs] == [0, 1, 2]
    (whole,) = build_graphs(links, GraphSettings(subset_size=10_000))
    summed = (pl.concat([g.edges_frame() for g in graphs]).group_by("kind", "src", "dst")
              .agg(pl.col("count").sum()).sort("kind", "src", "dst"))
    assert summed.equals(whole.edges_frame().drop("subset").sort("kind", "src", "dst"))


def test_step_probabilities_follow_counts_and_temperature() -> None:
    (graph,) = build_graphs(HAND_BUILT, GraphSettings())
    epsilon = 0.5
    for temperature in (1.0, 3.0):
        steps = graph.transitions(TOPIC_KC, epsilon, temperature)
        neighbours, probability = steps.probabilities(0)  # topic:A -> x (2), y (1), z (1)
        weight = np.array([2.0, 1.0, 1.0]) + epsilon
        expected = weight ** (1 / temperature) / (weight ** (1 / temperature)).sum()
        assert graph.kcs.gather(neighbours).to_list() == ["kc:x", "kc:y", "kc:z"]
        np.testing.assert_allclose(probability, expected)


def test_same_kind_edges_are_walked_both_ways_in_proportion_to_counts() -> None:
    # kc:x shares two documents with kc:y and one with kc:z; topic:B one each with topic:A and topic:C.
    (graph,) = build_graphs(links_frame([
        ("d1", "topic:A", "kc:x"), ("d1", "topic:B", "kc:y"),
        ("d2", "topic:A", "kc:x"), ("d2", "topic:A", "kc:y"),
        ("d3", "topic:C", "kc:x"), ("d3", "topic:B", "kc:z"),
    ]), GraphSettings())
    epsilon, temperature = 0.5, 2.0
    kc_steps = graph.transitions(KC_KC, epsilon, temperature)
    kc_index = {name: i for i, name in enumerate(graph.kcs.to_list())}
    neighbours, probability = kc_steps.probabilities(kc_index["kc:x"])
    weight = (np.array([2.0, 1.0]) + epsilon) ** (1 / temperature)
    assert graph.kcs.gather(neighbours).to_list() == ["kc:y", "kc:z"]
    np.testing.assert_allclose(probability, weight / weight.sum())
    for end in ("kc:y", "kc:z"):  # stored once as (x, y) and (x, z), walked back to x as well
        neighbours, probability = kc_steps.probabilities(kc_index[end])
        assert graph.kcs.gather(neighbours).to_list() == ["kc:x"]
        np.testing.assert_allclose(probability, [1.0])
    topic_steps = graph.transitions(TOPIC_TOPIC, epsilon, temperature)
    neighbours, probability = topic_steps.probabilities(graph.topics.to_list().index("topic:B"))
    assert graph.topics.gather(neighbours).to_list() == ["topic:A", "topic:C"]
    np.testing.assert_allclose(probability, [0.5, 0.5])
    np.testing.assert_array_equal(kc_steps.degree, [2, 1, 1])


def test_step_sampling_matches_the_probabilities() -> None:
    (graph,) = build_graphs(HAND_BUILT, GraphSettings())
    steps = graph.transitions(TOPIC_KC, epsilon=1e-3, temperature=1.0)
    rng = np.random.default_rng(7)
    draws = steps.step(np.zeros(20_000, dtype=np.int64), rng.random(20_000))
    observed = np.bincount(draws, minlength=3)
    proportional = np.array([2, 1, 1]) + 1e-3
    assert stats.chisquare(observed, proportional / proportional.sum() * observed.sum()).pvalue > 1e-3
    assert stats.chisquare(observed, np.full(3, observed.sum() / 3)).pvalue < 1e-9  # the test can fail


def hub_corpus(n_spokes: int) -> pl.DataFrame:
    """Each spoke topic shares 3 documents with hub H1 and 1 with hub H2, with its own KC."""
    rows = []
    for spoke in range(n_spokes):
        docs = [(f"s{spoke}-{i}", "topic:H1") for i in range(3)] + [(f"s{spoke}-3", "topic:H2")]
        for doc, hub in docs:
            rows += [(doc, f"topic:S{spoke:03d}", f"kc:k{spoke}"), (doc, hub, None), (doc, hub, f"kc:h{hub}")]
    return links_frame(rows)


def first_step_counts(combinations: pl.DataFrame) -> np.ndarray:
    spokes = combinations.filter(pl.col("start_topic").str.starts_with("topic:S"))
    first = spokes["walk"].list.get(1)
    return np.array([(first == "topic:H1").sum(), (first == "topic:H2").sum()])


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_walks_step_in_proportion_to_counts(temperature: float) -> None:
    (graph,) = build_graphs(hub_corpus(300), GraphSettings())
    settings = GraphSettings(epochs=5, temperature=temperature, seed=11)
    observed = first_step_counts(sample_combinations(graph, settings))
    assert observed.sum() == 300 * 5  # every spoke walks once per epoch, first step to a hub
    weight = (np.array([3.0, 1.0]) + settings.epsilon) ** (1 / temperature)
    expected = weight / weight.sum() * observed.sum()
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    assert stats.chisquare(observed, np.full(2, observed.sum() / 2)).pvalue < 1e-6  # uniform is rejected


def test_temperature_flattens_the_walk() -> None:
    (graph,) = build_graphs(hub_corpus(300), GraphSettings())
    shares = []
    for temperature in (0.5, 1.0, 4.0):
        observed = first_step_counts(sample_combinations(graph, GraphSettings(temperature=temperature)))
        shares.append(observed[0] / observed.sum())
    assert shares[0] > shares[1] > shares[2] > 0.5


def test_walk_structure() -> None:
    links = random_corpus(400, seed=5)
    (graph,) = build_graphs(links, GraphSettings())
    settings = GraphSettings(epochs=3)
    combinations = sample_combinations(graph, settings)
    edges = {(r["src"], r["dst"]) for r in graph.edges_frame().iter_rows(named=True)}
    edges |= {(dst, src) for src, dst in edges}
    assert combinations["combo_id"].n_unique() == combinations.height
    for row in combinations.iter_rows(named=True):
        walk = row["walk"]
        kinds = [node.split(":")[0] for node in walk]
        n_topics = kinds.index("kc")
        assert kinds == ["topic"] * n_topics + ["kc"] * (len(walk) - n_topics)  # topics, then KCs
        assert 1 <= n_topics <= 3 and 2 <= len(walk) - n_topics <= 5  # start + <=2 steps; 1 + <=4
        assert all(step in edges for step in zip(walk, walk[1:]))
        assert row["start_topic"] == walk[0]
        assert row["topics"] == list(dict.fromkeys(walk[:n_topics]))
        assert row["kcs"] == list(dict.fromkeys(walk[n_topics:]))


def test_isolated_topics_start_nothing_and_stuck_topics_stay_put() -> None:
    # topic:A has no topic neighbour: its walk has no topic step but still reaches its KCs.
    links = links_frame([("d1", "topic:A", "kc:x"), ("d1", "topic:A", "kc:y"), ("d2", "topic:Z", None)])
    (graph,) = build_graphs(links, GraphSettings())
    combinations = sample_combinations(graph, GraphSettings(epochs=2))
    assert combinations["start_topic"].to_list() == ["topic:A", "topic:A"]
    for walk in combinations["walk"].to_list():
        assert walk[0] == "topic:A" and set(walk[1:]) <= {"kc:x", "kc:y"}


def test_sampling_is_reproducible_and_seeded() -> None:
    links = random_corpus(300, seed=9)
    graphs = build_graphs(links, GraphSettings(subset_size=150))
    settings = GraphSettings(subset_size=150, seed=4)
    first = [sample_combinations(g, settings) for g in graphs]
    again = [sample_combinations(g, settings) for g in reversed(graphs)][::-1]  # other order, same result
    assert all(a.equals(b) for a, b in zip(first, again))
    other = sample_combinations(graphs[0], settings.model_copy(update={"seed": 5}))
    assert not other["walk"].equals(first[0]["walk"])
    rebuilt = ConceptGraph.from_edges(graphs[1].edges_frame(), subset=graphs[1].subset)
    assert sample_combinations(rebuilt, settings).equals(first[1])  # edges table round trip


def test_budget_keeps_a_random_subset_and_smaller_budgets_nest() -> None:
    (graph,) = build_graphs(random_corpus(400, seed=2), GraphSettings())
    settings = GraphSettings(epochs=3)
    everything = sample_combinations(graph, settings)
    small, large = (sample_combinations(graph, settings, budget) for budget in (graph.n_topics // 2, graph.n_topics + 3))
    assert small.height == graph.n_topics // 2 and large.height == graph.n_topics + 3
    assert set(small["combo_id"]) <= set(large["combo_id"]) <= set(everything["combo_id"])
    # the cut epoch keeps a seeded choice of walkers, not the alphabetically first topics
    assert small["start_topic"].to_list() != sorted(everything.filter(pl.col("epoch") == 0)["start_topic"])[: small.height]


def brute_force_references(links: pl.DataFrame, topics: list[str], kcs: list[str], k: int, row: int,
                           seed: int = 0) -> tuple[list[str], list[float]]:
    """Every document scored; ties in the order tie_order gives the pair (row, document index)."""
    concepts = {("t", t) for t in topics} | {("k", c) for c in kcs}
    documents: dict[str, set[tuple[str, str]]] = {}
    for doc, topic, kc in links.iter_rows():
        documents.setdefault(doc, set()).add(("t", topic))
        if kc is not None:
            documents[doc].add(("k", kc))
    names = sorted(documents)
    ties = tie_order(seed, np.full(len(names), row), np.arange(len(names)))
    scored = sorted((-len(concepts & documents[doc]) / len(concepts | documents[doc]), int(tie), doc)
                    for doc, tie in zip(names, ties) if concepts & documents[doc])
    return [doc for _, _, doc in scored[:k]], [-score for score, _, _ in scored[:k]]


@pytest.mark.parametrize(("full_expansion_df", "references"), [(1, 2), (4, 3), (10_000, 2)])
def test_grounding_returns_the_true_top_k(full_expansion_df: int, references: int) -> None:
    links = random_corpus(500, seed=13)
    (graph,) = build_graphs(links, GraphSettings())
    combinations = sample_combinations(graph, GraphSettings(epochs=3))
    extra = pl.DataFrame({  # concepts the index has never seen must count in the union, not match
        "topics": [["topic:t1", "topic:nowhere"], ["topic:nowhere"]], "kcs": [["kc:k0", "kc:none"], []],
    })
    combinations = pl.concat([combinations.select("topics", "kcs"), extra])
    index = InvertedIndex.from_links(links, full_expansion_df=full_expansion_df)
    # small batches and two threads: many batches, rows split across them
    grounded = ground(combinations, index, references, seed=7, workers=2, batch_postings=300)
    for number, row in enumerate(grounded.iter_rows(named=True)):
        docs, scores = brute_force_references(links, row["topics"], row["kcs"], references, number, seed=7)
        assert row["ref_doc_ids"] == docs
        np.testing.assert_allclose(row["ref_jaccard"], scores)
    assert grounded["ref_doc_ids"].to_list()[-1] == []


def test_grounding_ties_are_spread_by_a_seeded_hash() -> None:
    # 40 documents with the same concepts are equally good references for every combination.
    links = links_frame([(f"d{i:02d}", "topic:A", "kc:x") for i in range(40)] + [("z", "topic:B", None)])
    combinations = pl.DataFrame({"topics": [["topic:A"]] * 200, "kcs": [["kc:x"]] * 200})
    grounded = ground(combinations, links, 2, seed=3)
    references = grounded["ref_doc_ids"].to_list()
    assert grounded["ref_jaccard"].to_list() == [[1.0, 1.0]] * 200
    assert all(len(set(pair)) == 2 for pair in references)
    firsts = Counter(pair[0] for pair in references)
    assert len(firsts) >= 30 and max(firsts.values()) <= 20  # not every row taking d00, d01
    assert ground(combinations, links, 2, seed=3)["ref_doc_ids"].to_list() == references  # reproducible
    assert ground(combinations, links, 2, seed=4)["ref_doc_ids"].to_list() != references  # seeded


def test_walkers_that_reach_no_kc_leave_the_kc_steps_alone() -> None:
    # Six topics share d2, only topic:A has a KC: walks ending on B..F reach none. Their position
    # is still a topic index, which the KC steps used to look up in the (1-row) KC subgraph.
    links = links_frame([("d1", "topic:A", "kc:x")] + [("d2", f"topic:{t}", None) for t in "ABCDEF"])
    (graph,) = build_graphs(links, GraphSettings())
    assert (graph.n_topics, graph.kcs.len()) == (6, 1)
    combinations = sample_combinations(graph, GraphSettings(epochs=5))
    assert 0 < combinations.height < 6 * 5
    assert all(walk[-2:] == ["topic:A", "kc:x"] for walk in combinations["walk"].to_list())
    # topics only: no walker ever reaches a KC
    (no_kcs,) = build_graphs(links_frame([("d1", "topic:A", None), ("d1", "topic:B", None)]), GraphSettings())
    assert sample_combinations(no_kcs, GraphSettings()).height == 0


def expected_kc_topics(edges: pl.DataFrame, topics: list[str], kcs: list[str]) -> list[str]:
    """By hand from the edges table: the combination's topic sharing most documents with the KC
    (the first visited on a tie), else the KC's most strongly linked topic (first by name)."""
    counts = {(r["src"], r["dst"]): r["count"] for r in edges.filter(pl.col("kind") == TOPIC_KC).iter_rows(named=True)}
    paired = []
    for kc in kcs:
        linked = [(counts.get((topic, kc), 0), -place, topic) for place, topic in enumerate(topics)]
        best = max(linked)
        if best[0] > 0:
            paired.append(best[2])
        else:
            paired.append(min((-count, topic) for (topic, other), count in counts.items() if other == kc)[1])
    return paired


def test_each_kc_is_paired_with_a_topic() -> None:
    links = random_corpus(400, seed=5, n_topics=60, n_kcs=80)
    (graph,) = build_graphs(links, GraphSettings())
    combinations = sample_combinations(graph, GraphSettings(epochs=3))
    edges = graph.edges_frame()
    own_topic = 0
    for row in combinations.iter_rows(named=True):
        assert len(row["kc_topics"]) == len(row["kcs"])
        assert row["kc_topics"] == expected_kc_topics(edges, row["topics"], row["kcs"])
        own_topic += sum(topic in row["topics"] for topic in row["kc_topics"])
    pairs = combinations["kcs"].list.len().sum()
    assert 0 < own_topic < pairs  # both rules are exercised
    # Hand-built: x shares 2 documents with A and 1 with B; z none with A or B, its topic is C.
    hand = links_frame([
        ("d1", "topic:A", "kc:x"), ("d1", "topic:B", "kc:y"), ("d2", "topic:A", "kc:x"),
        ("d3", "topic:B", "kc:y"), ("d4", "topic:C", "kc:y"), ("d4", "topic:C", "kc:z"),
    ])
    (small,) = build_graphs(hand, GraphSettings())
    assert expected_kc_topics(small.edges_frame(), ["topic:A", "topic:B"], ["kc:x", "kc:y", "kc:z"]) == [
        "topic:A", "topic:B", "topic:C"]
    walks = sample_combinations(small, GraphSettings(epochs=20))
    seen = {tuple(zip(r["kcs"], r["kc_topics"])) for r in walks.iter_rows(named=True)
            if r["topics"] == ["topic:A", "topic:B"] and r["kcs"] == ["kc:x", "kc:y", "kc:z"]}
    assert seen == {(("kc:x", "topic:A"), ("kc:y", "topic:B"), ("kc:z", "topic:C"))}


def test_split_budget_follows_the_weights() -> None:
    assert split_budget(10, [1, 1, 1]) == [4, 3, 3]
    assert split_budget(100, [600, 300, 100]) == [60, 30, 10]
    assert split_budget(0, [5, 5]) == [0, 0]
    with pytest.raises(ValueError, match="cannot split"):
        split_budget(3, [0, 0])


def document_concept_rows(links: pl.DataFrame) -> pl.DataFrame:
    return links.with_columns(
        topic_surface=pl.col("topic_id").str.split(":").list.get(1),
        kc_surface=pl.col("kc_id").str.split(":").list.get(1),
        prompt_version=pl.lit("v1"), model=pl.lit("scripted"), shard_id=pl.lit("links"), run_id=pl.lit("r0"),
    )


def test_the_stage_splits_the_budget_over_subsets_and_stores_kc_topics(tmp_path) -> None:
    store = Store(str(tmp_path / "store"))
    links = random_corpus(600, seed=21)
    store.write_shard("document_concepts", "links", document_concept_rows(links))
    settings = Settings.model_validate({"graph": {"subset_size": 200, "epochs": 3},
                                        "generation": {"max_combinations": 30}})
    result = build_concept_graph(store, settings, "run-1", ["links"])
    combinations = store.read_table("concept_combinations")
    per_subset = combinations.group_by("subset").len().sort("subset")
    documents = assign_subsets(links, 200).group_by("subset").agg(pl.col("doc_id").n_unique()).sort("subset")
    assert per_subset["subset"].to_list() == [0, 1, 2]  # every subset, not only the first
    assert per_subset["len"].to_list() == split_budget(30, documents["doc_id"].to_list())
    assert result["combinations"] == combinations.height == 30
    assert [s["budget"] for s in result["subsets"]] == per_subset["len"].to_list()
    assert (combinations["kc_topics"].list.len() == combinations["kcs"].list.len()).all()
    again = build_concept_graph(store, settings, "run-2", ["links"])
    assert all(s["skipped"] for s in again["subsets"]) and again["graph_key"] == result["graph_key"]


def test_a_kc_without_a_topic_is_a_clear_error() -> None:
    edges = pl.DataFrame({"kind": [TOPIC_TOPIC, TOPIC_KC, KC_KC], "src": ["topic:A", "topic:A", "kc:x"],
                          "dst": ["topic:B", "kc:x", "kc:y"], "count": [1, 1, 1]})
    with pytest.raises(ValueError, match=r"without a topic-kc edge.*kc:y"):
        sample_combinations(ConceptGraph.from_edges(edges), GraphSettings())


def write_link_shards(store: Store, links: pl.DataFrame, shards: int) -> list[str]:
    """``links`` as ``shards`` document_concepts shards, whole documents in each (as the concepts stage writes)."""
    numbered = document_concept_rows(links).with_columns(
        shard=pl.col("doc_id").str.slice(3).cast(pl.Int64) % shards)
    names = []
    for (shard,), part in sorted(numbered.partition_by("shard", as_dict=True, include_key=False).items()):
        names.append(f"links-{shard}")
        store.write_shard("document_concepts", names[-1], part.with_columns(shard_id=pl.lit(names[-1])))
    return names


@pytest.mark.parametrize("subset_size", [200, 10_000])
def test_the_graph_task_reads_its_links_a_shard_at_a_time(any_store, monkeypatch, subset_size) -> None:
    """Its memory follows a subset of documents, not the corpus: the link shards are read one at a
    time, once to list them and once per subset (once in all for a corpus of one subset), and each
    subset's graph gets exactly its documents' links, as splitting the whole table gives them."""
    store = any_store
    links = random_corpus(600, seed=5)
    shards = write_link_shards(store, links, 4)
    largest = max(store.read_table("document_concepts", [s]).height for s in shards)
    whole = store.read_table("document_concepts", shards).select("doc_id", "topic_id", "kc_id")
    reads: list[tuple[str, int]] = []
    read_file = Store.read_parquet_file

    def counting_read(self, path, columns=None):
        table = read_file(self, path, columns)
        if "/document_concepts/" in path:
            reads.append((path, table.num_rows))
        return table

    monkeypatch.setattr(Store, "read_parquet_file", counting_read)
    given: list[pl.DataFrame] = []
    from_links = ConceptGraph.from_links.__func__
    monkeypatch.setattr(ConceptGraph, "from_links", classmethod(lambda cls, part, subset: (
        given.append(part), from_links(cls, part, subset))[1]))
    settings = Settings.model_validate({"graph": {"subset_size": subset_size, "epochs": 2},
                                        "generation": {"max_combinations": 40}})
    result = build_concept_graph(store, settings, "run-1", shards)

    expected = [part for _, part in sorted(assign_subsets(whole, subset_size)
                                           .partition_by("subset", as_dict=True, include_key=False).items())]
    assert len(given) == len(expected) == len(result["subsets"]) == (3 if subset_size == 200 else 1)
    assert all(got.equals(want) for got, want in zip(given, expected))
    assert reads and max(rows for _, rows in reads) == largest < whole.height
    read_counts = Counter(path for path, _ in reads)
    assert set(read_counts.values()) == ({1 + len(expected)} if len(expected) > 1 else {1})


def test_a_link_without_a_topic_names_its_shard(tmp_path) -> None:
    store = Store(str(tmp_path / "store"))
    links = random_corpus(40, seed=2)
    shards = write_link_shards(store, links, 2)
    broken = store.read_table("document_concepts", [shards[1]]).with_columns(
        topic_id=pl.when(pl.int_range(pl.len()) == 0).then(None).otherwise(pl.col("topic_id")))
    store.write_shard("document_concepts", shards[1], broken)
    with pytest.raises(ValueError, match=rf"{shards[1]}\.parquet: 1 rows have no topic_id"):
        build_concept_graph(store, Settings(), "run-1", shards)


def test_the_concepts_table_lists_surface_forms_and_counts_documents(tmp_path) -> None:
    store = Store(str(tmp_path / "store"))
    rows = pl.DataFrame({
        "doc_id": ["d1", "d1", "d1", "d2", "d2", "d3"],
        "topic_id": ["topic:algebra", "topic:algebra", "topic:algebra", "topic:algebra", "topic:algebra", "topic:geometry"],
        "topic_surface": ["Algebra", "Algebra", "Algebra", "algebra", "algebra", None],
        "kc_id": [None, "kc:ratio", "kc:ratio", "kc:ratio", None, "kc:angle"],
        "kc_surface": [None, "Ratios", "ratio", "Ratios", None, None],
        "prompt_version": "v1", "model": "scripted", "shard_id": "links", "run_id": "r0"})
    store.write_shard("document_concepts", "links", rows)
    build_concept_graph(store, Settings(), "run-1", ["links"])
    table = store.read_table("concepts").select("concept_id", "kind", "name", "surface_forms", "n_documents")
    assert table.to_dicts() == [
        {"concept_id": "kc:angle", "kind": "kc", "name": "angle", "surface_forms": [], "n_documents": 1},
        {"concept_id": "kc:ratio", "kind": "kc", "name": "ratio", "surface_forms": ["Ratios", "ratio"], "n_documents": 2},
        {"concept_id": "topic:algebra", "kind": "topic", "name": "algebra", "surface_forms": ["Algebra", "algebra"],
         "n_documents": 2},
        {"concept_id": "topic:geometry", "kind": "topic", "name": "geometry", "surface_forms": [], "n_documents": 1},
    ]
