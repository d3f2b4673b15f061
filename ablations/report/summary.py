"""What was found, in sentences built from the verdicts (never typed): the README's first screen.

Each sentence is made from the findings cells it cites (verdict, Δ and its CI, seeds) through one phrase per
verdict, so a sentence cannot say more than its verdict: `tests/test_summary.py` rebuilds every sentence's
claim from its cells and fails when they disagree."""
from __future__ import annotations

from dataclasses import dataclass

from ablations.decide.verdicts import PARTNER, next_step
from ablations.report.formatting import fmt_ci

# Published frozen-encoder Flickr8k captioners (test split, BLEU-4 / CIDEr) that the real-data targets come from:
# numbers outside this study, quoted so a reader can place ours.
PUBLISHED = (("Vinyals et al. 2015 (NIC)", 0.198, 0.478), ("Xu et al. 2015 (soft attention)", 0.197, 0.497),
             ("Lu et al. 2017 (adaptive attention)", 0.205, 0.524))

# How each verdict reads in a sentence about "the variant is <expected>": the one place that turns a verdict word
# into words, so a summary never claims more than its verdict.
PHRASE = {"held": "yes", "not held": "no", "inconclusive": "undecided", "seeds disagree": "undecided (its seeds "
          "disagree in kind)", "partner's seeds disagree": "undecided (the seeds of the variant it is compared with "
          "disagree in kind)", "equivalent": "equivalent within the declared margin", "differs": "it differs"}


@dataclass
class Sentence:
    text: str
    cites: list[tuple[str, str, str]]  # (variant, expected, table) of each findings cell it is built from


def _cell(data, variant: str, table: str, claim_start: str) -> tuple[str, dict] | None:
    for v, claim, cells in data.rows:
        if v == variant and claim.startswith(claim_start) and cells.get(table, {}).get("verdict"):
            return claim, cells[table]
    return None


def _said(cell: dict) -> str:
    """'<phrase> (ΔCIDEr 0.004 [−0.022, 0.030], 5 seeds)' from one cell."""
    text = PHRASE.get(cell["verdict"], cell["verdict"])
    if cell.get("delta") is not None:
        text += (f" (Δ{cell['quantity']} {cell['delta']:+.3f} [{cell['ci_low']:+.3f}, {cell['ci_high']:+.3f}]"
                 f", {cell.get('seeds_variant')} vs {cell.get('seeds_compared')} seeds)")
    return text


def _ablation(data, variant: str, claim_start: str, what: str, tables: tuple[str, ...]) -> Sentence | None:
    """One sentence per ablation: its claim and verdict in each table (claims may differ by table, e.g. an
    equivalence margin declared for one of them)."""
    parts, cites = [], []
    for t in tables:
        found = _cell(data, variant, t, claim_start)
        if found:
            claim, cell = found
            parts.append((claim, f"`{t}` {_said(cell)}"))
            cites.append((variant, claim, t))
    if not parts:
        return None
    text, last = f"{what}:", None
    for claim, said in parts:
        text += ("; " if last else " ") + (f"{claim}? " if claim != last else "") + said
        last = claim
    return Sentence(text + ".", cites)


def target_sentence(targets: dict[str, list[dict]], table: str = "flickr8k") -> Sentence | None:
    """The canonical model against its targets and the published systems, with how far above or below."""
    rows = {t["key"]: t for t in targets.get(table, []) if t.get("got") is not None and "interval" in t}
    if not {"BLEU-4", "CIDEr"} <= set(rows):
        return None
    b, c = rows["BLEU-4"], rows["CIDEr"]
    beats = [p for p in PUBLISHED if c["got"] > p[2]]
    misses = [(n, pc) for n, pb, pc in PUBLISHED if c["got"] <= pc]
    text = (f"The canonical `full` model scores BLEU-4 {fmt_ci(b['interval'])} and CIDEr {fmt_ci(c['interval'])} on "
            f"the Flickr8k test split ({c['interval'].n} seeds): the targets ≥ {b['goal']:g} / ≥ {c['goal']:g} (met only when the "
            f"whole 95% CI is above) are {b['decision']} / {c['decision']}. Against published frozen-encoder "
            f"systems, its mean CIDEr {c['got']:.3f} is "
            + ("above " + " and ".join(f"{n} ({pc:.3f})" for n, _, pc in beats) if beats else "above none of them")
            + ("" if not misses else " and below " + " and ".join(f"{n} ({pc:.3f}, by {pc - c['got']:.3f})" for n, pc in misses))
            + ".")
    return Sentence(text, [])


def readme_summary(data, targets: dict[str, list[dict]]) -> list[Sentence]:
    """3-6 sentences: the canonical real-data answers first, then where the pretrained LM and shapes differ."""
    real = ("flickr8k", "shapes", "flickr8k-smollm2")
    out = [target_sentence(targets),
           _ablation(data, "meanpool", "CIDEr", "Mean-pooling the patch features instead of the Q-Former", real),
           _ablation(data, "no-lora", "uses the image less", "Freezing the LM without LoRA", real),
           _ablation(data, "frozen-qformer", "CIDEr below", "Leaving the Q-Former at its random init", real),
           _ablation(data, "seed-recipe", "collapses", "The original recipe (pad = EOS kept in the labels, "
                     "generation from EOS)", real)]
    recipe = _cell(data, "seed-recipe", "flickr8k", "collapses")
    if out[-1] is not None and recipe and recipe[1]["verdict"] == "not held":
        out[-1].text += (" On `flickr8k` its cross-entropy models do collapse; the two self-critical epochs of that"
                         " table repair them (measured on the stored weights: "
                         "[notes/flickr8k.md](ablations/tables/notes/flickr8k.md), \"The canonical table, complete\").")
    return [s for s in out if s is not None]


def claim_of(sentence: Sentence, data) -> list[str]:
    """The phrases a sentence must contain, rebuilt from the cells it cites (what the test checks)."""
    phrases = []
    for variant, claim, table in sentence.cites:
        cell = next(cells[table] for v, c, cells in data.rows if v == variant and c == claim)
        phrases.append(f"`{table}` {_said(cell)}")
    return phrases


def summary_markdown(sentences: list[Sentence]) -> str:
    return "\n".join(f"- {s.text}" for s in sentences)


def _first_clause(text: str) -> str:
    """The text up to its first '; ' outside parentheses (a verdict's numbers list one test per clause)."""
    depth = 0
    for k, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if depth == 0 and text.startswith("; ", k):
            return text[:k]
    return text


def what_next(v, reference: str) -> str:
    """One line for an undecided verdict: what its guard asks for, or the seeds its tests would need
    (verdicts.next_step)."""
    others = f"`{v.variant}`" + (f" and `{reference}`" if v.variant != reference else "")
    if v.verdict == "seeds disagree":
        return f"look at why its runs split (the strip plot shows each run), then more seeds of {others}"
    if v.verdict == f"{PARTNER} disagree":
        guard = next(t.guard for t in v.tests if t.guard)
        return f"the variant it is compared with splits ({guard.split(': ', 1)[1]}): look at why, then more seeds of it"
    if v.verdict == "confounded":
        return ("runs of one code version (rerun the older ones), or `ablate verify --cell VARIANT:SEED` showing "
                "the versions give the same results")
    steps = [s for t in v.tests if (s := next_step(t))]
    return "; ".join(steps) if steps else f"more seeds of {others}"


def report_answer(table, a, looks=None) -> list[str]:
    """A report's first section: each expectation's verdict in one line with its first number, then what
    would decide the undecided ones. Built from the same verdicts as the 'Expected vs observed' table.
    ``looks``: the sequential.LookResult of a table whose seeds were added until decided (then more seeds come
    from its plan, not from the table file)."""
    lines = ["## Answer", "",
             "Each expectation of the table, answered at seed level (details, every test and the rule: "
             "\"Expected vs observed\" below; every run per variant: the strip beside each forest plot).", ""]
    undecided = []
    for v in a.expectations:
        if v.verdict == "n/a":
            continue
        first = _first_clause(v.numbers or "")
        lines.append(f"- `{v.variant}`: {v.expected}? **{PHRASE.get(v.verdict, v.verdict)}**"
                     + (f" ({first})" if first else ""))
        if v.verdict not in ("held", "not held", "equivalent", "differs"):
            undecided.append(v)
    for t in a.targets:
        if t.get("interval") is not None:
            lines.append(f"- target {t['key']} ≥ {t['goal']:g} for `{table.reference}`: **{t['decision']}** "
                         f"({fmt_ci(t['interval'])})")
    if undecided and looks is not None:
        names = ", ".join(f"`{v.variant}` ({v.verdict})" for v in undecided)
        lines += ["", f"What next: {names} " + (
            f"stayed open when the planned looks were spent ({looks.reason}): the seeds the plan allows do not decide it; "
            "more seeds need a new plan on new evidence (docs/how-reports-decide.md)." if looks.done else
            f"still open ({looks.reason}): `ablate run-all {table.name} --until-decided` continues.")]
    elif undecided:
        lines += ["", "What next, per undecided verdict (seeds per variant from the rule's simulated power, 80%, each "
                  "test alone before Holm; \"> 200\": more than the search goes to): add them to `seeds` in the "
                  "table, then `ablate run-all` (runs already in the evidence are kept).", ""]
        lines += [f"- `{v.variant}` ({v.verdict}): {what_next(v, table.reference)}." for v in undecided]
    return lines + [""]
