"""A run's identity: one "added later" rule for every section, so a new setting at its default keeps every
committed run current (not stale, not redone)."""
import dataclasses

import pytest

from ablations.run import identity
from ablations.run.planning import expected_hash
from ablations.run.record import REPORTS_DIR, RunRecord, cell_path, evidence_dir
from ablations.tables import load_table


def _with_new_field(obj, cls):
    return cls(**{f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})


@pytest.mark.parametrize("section", ["model", "probes", "train", "data"])
def test_a_field_added_to_any_section_at_its_default_keeps_the_committed_runs_done(monkeypatch, section):
    table = load_table("shapes")
    New = dataclasses.make_dataclass(identity.SECTIONS[section].__name__, [("added_later", int, 0)],
                                     bases=(identity.SECTIONS[section],))
    monkeypatch.setitem(identity.SECTIONS, section, New)
    evidence = evidence_dir(REPORTS_DIR, table.name)
    for value, want in ((0, "done"), (3, "stale")):
        states = set()
        for v in table.variants.values():
            owner = v if section in ("model", "train") else table
            setattr(owner, section, dataclasses.replace(_with_new_field(getattr(owner, section), New), added_later=value))
            for s in v.seeds:
                states.add(RunRecord(cell_path(evidence, v.name, s)).status(expected_hash(table, v, s)))
        assert states == {want}, f"{section}.added_later = {value}"


def test_the_keys_hashed_always_are_the_sections_own():
    """A frozen key that a section no longer has, or a section without its frozen list, is a mistake."""
    assert set(identity.HASHED_KEYS) == set(identity.SECTIONS)
    for path, keys in identity.HASHED_KEYS.items():
        names = {f.name for f in dataclasses.fields(identity.SECTIONS[path])}
        assert set(keys) <= names, path
