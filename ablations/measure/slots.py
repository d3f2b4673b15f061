"""Slot accuracy on ``shapes``: what a generated caption gets right about the structured labels."""
from __future__ import annotations

from vlm_core.shapes import RELATIONS, parse_shapes_caption


def slot_scores(caption: str, label: dict) -> dict[str, float]:
    """Per-slot correctness (0/1 or a fraction) of one generated caption against structured labels.

    colour/shape/size: share of the true objects whose attribute the caption names correctly
    (objects aligned in the better of the two orders); count: right number of objects;
    relation (two-object images only): the right relation between the right objects.
    """
    truth = label["objects"]
    parsed, rel = parse_shapes_caption(caption)
    scores = {"count": float(len(parsed) == len(truth))}
    orders = [list(range(len(parsed)))]
    if len(parsed) == 2:
        orders.append([1, 0])
    best, best_order = None, orders[0]
    for order in orders:
        per = {}
        for slot in ("colour", "shape", "size"):
            hits = sum(1 for i, t in enumerate(truth) if i < len(order) and parsed[order[i]][slot] == t[slot])
            per[slot] = hits / len(truth)
        if best is None or sum(per.values()) > sum(best.values()):
            best, best_order = per, order
    scores.update(best)
    if label["relation"] is not None:
        ok = False
        if len(parsed) == 2 and rel is not None:
            same_order = best_order == [0, 1]
            expected = label["relation"] if same_order else RELATIONS[label["relation"]]
            ok = rel == expected and all(
                parsed[best_order[i]][s] == truth[i][s] for i in range(2) for s in ("colour", "shape", "size"))
        scores["relation"] = float(ok)
    return scores
