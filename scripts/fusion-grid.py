#!/usr/bin/env python3
"""The fusion grid behind search::recall's defaults: MRR@10 of convex fusion
(w * cosine + (1 - w) * share^p) for a range of exponents p and weights w, minus the better
single retriever's, on each query set, from the candidates `nexus-bench recall --dump FILE`
wrote (each query's first 100 hybrid candidates with their cosine and BM25 match share).

    target/debug/nexus-bench recall --dump /tmp/candidates.jsonl
    scripts/fusion-grid.py /tmp/candidates.jsonl
"""
import json
import sys

sets = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    sets.setdefault(r["set"], []).append(r["candidates"])


def mrr(score):
    out = {}
    for name, queries in sets.items():
        total = 0.0
        for cands in queries:
            order = sorted(range(len(cands)), key=lambda i: -score(cands[i][1], cands[i][2]))
            ranks = [k + 1 for k, i in enumerate(order) if cands[i][0]]
            if ranks and ranks[0] <= 10:
                total += 1 / ranks[0]
        out[name] = total / len(queries)
    return out


vectors = mrr(lambda s, b: s)
words = mrr(lambda s, b: b + 1e-6 * s)
best = {k: max(vectors[k], words[k]) for k in sets}
weights = [0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9]
print("sets:", " / ".join(sets))
print("best single retriever's MRR@10:", " / ".join("%.3f" % best[k] for k in sets))
print("| p \\ w | " + " | ".join(str(w) for w in weights) + " |")
print("|---|" + "---|" * len(weights))
for p in [1, 1.5, 2, 2.5, 3, 3.5, 4]:
    cells = []
    for w in weights:
        r = mrr(lambda s, b: w * s + (1 - w) * b ** p)
        cells.append("/".join("%+.3f" % (r[k] - best[k]) for k in sets))
    print("| %s | %s |" % (p, " | ".join(cells)))
