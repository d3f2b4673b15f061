"""Control tables: the shipped ones parse; bad files give errors naming the file and key."""
import pytest

from ablations.tables import load_table, shipped_tables
from vlm_core.errors import UserError

GOOD = """
[table]
name = "micro"
seeds = [0, 1]
[data]
name = "shapes"
[data.shapes]
train = 10
[model]
num_queries = 4
[train]
epochs = 1
[variants.full]
expect = "image_dependent"
[variants.meanpool]
model = { connector = "meanpool" }
expect = "worse_than_reference"
[[sweep]]
base = "full"
key = "model.num_queries"
values = [2, 8]
"""


def _write(tmp_path, text):
    p = tmp_path / "t.toml"
    p.write_text(text)
    return str(p)


def test_shipped_tables_parse_with_all_required_variants():
    names = shipped_tables()
    assert {"shapes", "flickr8k", "flickr8k-tiny", "flickr8k-smollm2", "seed"} <= set(names)
    for name in names:
        t = load_table(name)
        assert {"full", "meanpool", "no-lora", "frozen-qformer", "blind", "seed-recipe"} <= set(t.variants), name
        assert t.variants["meanpool"].model.connector == "meanpool"
        assert t.variants["no-lora"].model.lora_rank == 0
        assert t.variants["frozen-qformer"].model.train_qformer is False
        assert t.variants["blind"].model.blind is True
        assert t.variants["seed-recipe"].model.recipe == "seed"
        assert all(v.expected for v in t.variants.values())


def test_overrides_and_sweeps(tmp_path):
    t = load_table(_write(tmp_path, GOOD))
    assert t.seeds == [0, 1] and t.data.shapes.train == 10
    assert t.variants["full"].model.num_queries == 4 and t.variants["full"].train.epochs == 1
    assert t.variants["meanpool"].model.num_queries == 4  # table defaults flow into every row
    assert t.variants["full-num_queries-2"].model.num_queries == 2
    assert t.variants["full-num_queries-8"].model.connector == "qformer"
    with pytest.raises(UserError, match="unknown variant.*nope"):
        t.select(["nope"])


def test_a_renamed_reference_is_the_sweeps_default_base_and_must_exist(tmp_path):
    text = GOOD.replace("[variants.full]", "[variants.base]").replace('base = "full"\n', "")
    t = load_table(_write(tmp_path, text.replace("[table]\n", '[table]\nreference = "base"\n', 1)))
    assert t.reference == "base" and t.variants["base-num_queries-2"].model.num_queries == 2
    with pytest.raises(UserError, match="table.reference: no variant 'full'"):
        load_table(_write(tmp_path, text))
    with pytest.raises(UserError, match="loses_relations needs slot labels"):
        load_table(_write(tmp_path, GOOD.replace('name = "shapes"', 'name = "flickr8k"').replace(
            'expect = "worse_than_reference"', 'expect = ["worse_than_reference", "loses_relations"]')))


@pytest.mark.parametrize("bad, message", [
    ("[table\nname = 'x'", "TOML syntax error"),
    (GOOD.replace("num_queries = 4", "num_querys = 4"), "model: unknown key 'num_querys'"),
    (GOOD.replace("epochs = 1", "epochs = 'one'"), r"train.epochs: expected int, got str"),
    (GOOD.replace('model = { connector = "meanpool" }', 'model = { connector = "median" }'),
     "variants.meanpool.model.*unknown connector .median.; known: qformer, meanpool"),
    (GOOD.replace('expect = "worse_than_reference"', 'expect = "better"'), "variants.meanpool.expect: unknown expectation"),
    (GOOD.replace("[data]", "[dataa]"), "unknown key 'dataa'"),
    (GOOD.replace('name = "shapes"', 'name = "coco"'), "data.name: must be"),
    (GOOD.replace("seeds = [0, 1]", "seeds = 3"), "table.seeds"),
    (GOOD.replace('key = "model.num_queries"', 'key = "num_queries"'), r"sweep\[0\].key"),
    (GOOD.replace("[variants.full]\n", "[variants.full]\ncolour = 1\n"), "variants.full: unknown key 'colour'"),
    (GOOD + '\n[targets]\n"BLEU-5" = 0.2\n', "unknown key 'targets.BLEU-5'"),
    (GOOD + '\n[targets]\nCIDEr = "high"\n', r"targets.CIDEr: expected float, got str"),
])
def test_bad_tables_name_file_and_key(tmp_path, bad, message):
    path = _write(tmp_path, bad)
    with pytest.raises(UserError, match=message) as err:
        load_table(path)
    assert path in str(err.value)


def test_an_included_file_gives_rows_the_table_adds_to(tmp_path):
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "rows.toml").write_text(
        '[variants.full]\nexpect = "image_dependent"\n[variants.meanpool]\nmodel = { connector = "meanpool" }\n'
        'expect = "worse_than_reference"\n')
    own = GOOD.split("[variants.full]")[0]
    t = load_table(_write(tmp_path, 'include = "common/rows.toml"\n' + own +
                          '[variants.meanpool]\nmodel = { num_queries = 2 }\nseeds = [0, 1, 2]\n[variants.extra]\n'))
    assert list(t.variants) == ["full", "meanpool", "extra"]  # the included rows first, in their order
    assert t.variants["meanpool"].model.connector == "meanpool"  # merged key by key, not replaced
    assert t.variants["meanpool"].model.num_queries == 2
    assert t.variants["meanpool"].expect == ["worse_than_reference"]
    assert t.variants["meanpool"].seeds == [0, 1, 2] and t.variants["full"].seeds == [0, 1] == t.seeds
    assert t.all_seeds == [0, 1, 2]
    (tmp_path / "common" / "rows.toml").write_text('include = "other.toml"\n')
    with pytest.raises(UserError, match=r"rows.toml: include: an included file cannot include"):
        load_table(str(tmp_path / "t.toml"))
    (tmp_path / "common" / "rows.toml").write_text('[variants.full]\ncolour = 1\n')
    with pytest.raises(UserError, match=r"t.toml \(with common/rows.toml\): variants.full: unknown key 'colour'"):
        load_table(str(tmp_path / "t.toml"))
    with pytest.raises(UserError, match=r"missing.toml: cannot read"):
        load_table(_write(tmp_path, 'include = "missing.toml"\n' + GOOD))
    with pytest.raises(UserError, match=r"variants.meanpool.seeds: expected a non-empty list of distinct"):
        load_table(_write(tmp_path, GOOD.replace('[variants.meanpool]\n', '[variants.meanpool]\nseeds = [1, 1]\n')))


def test_unknown_table_name():
    with pytest.raises(UserError, match="unknown table 'nope'"):
        load_table("nope")


def test_set_overrides_are_checked_like_table_keys():
    from ablations.tables import apply_settings, load_table

    table = load_table("shapes")
    (v,) = table.select(["full"])
    apply_settings(table, v, ["train.connector_lr=6e-4", "model.lora_targets=['c_attn']", "caption_lm.pack_length=0",
                              "model.connector=meanpool", "backbones.vision=efficientnet-lite2"])
    assert v.train.connector_lr == 6e-4 and v.model.lora_targets == ["c_attn"] and v.model.connector == "meanpool"
    assert table.caption_lm.pack_length == 0 and table.backbones.vision == "efficientnet-lite2"
    for bad, message in (("train.lr_typo=1", "unknown key 'lr_typo'"), ("train.epochs=two", "expected int"),
                         ("epochs=3", "SECTION.KEY=VALUE"), ("model.connector=pool", "model.connector"),
                         ("vision.x=1", "SECTION.KEY=VALUE")):
        with pytest.raises(UserError, match=message):
            apply_settings(table, v, [bad])
