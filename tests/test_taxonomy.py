import pytest

from schemas.taxonomy import STEERABLE, THEORIES, UnknownValueError, default_taxonomy, load_upstream
from tests.conftest import shared_data


def test_same_nodes_and_edges_as_upstream():
    upstream = load_upstream(shared_data() / "taxonomy")
    ours = default_taxonomy().theories
    for t in THEORIES:
        assert ours[t].nodes() == upstream[t].nodes(), t
        assert ours[t].edges() == upstream[t].edges(), t


def test_every_node_has_an_own_definition_different_from_upstream():
    import json

    upstream = json.loads((shared_data() / "taxonomy" / "all_definitions.json").read_text())["definitions"]
    tax = default_taxonomy()
    for v in tax.values():
        assert v.definition, f"{v.theory}:{v.name} has no definition"
        assert v.definition != upstream.get(v.name), f"{v.name}: definition copied from upstream"


def test_32_steerable_values_match_upstream_list():
    import json

    main = json.loads((shared_data() / "taxonomy" / "main_definitions.json").read_text())["definitions"]
    steer = default_taxonomy().steerable()
    assert len(steer) == 32 == sum(map(len, STEERABLE.values()))
    assert {v.key for v in steer} == set(main)


def test_aliases_and_lookup():
    tax = default_taxonomy()
    assert tax.get("care/harm") == tax.get("care-harm") == tax.get("Care_Harm")
    assert tax.get("care/harm").key == "care-harm"
    assert tax.theory_of("fairness-cheating") == "mft"
    assert tax.get("group_solidarity_rights").name == "social_group_solidarity_rights"
    # ambiguous names resolve to the steerable one, or can be qualified
    assert tax.get("tradition").theory == "pvq"
    assert tax.get("mft::tradition").theory == "mft"
    assert tax.get("justice").theory == "duty"
    assert tax.get("justice", theory="mft").parents == ("fairness/cheating",)


def test_hierarchy_queries_on_the_dag():
    tax = default_taxonomy()
    assert set(tax.get("hedonism").parents) == {"openness to change", "self-enhancement"}
    assert set(tax.paths("hedonism")) == {("growth", "openness to change", "hedonism"),
                                          ("self-protection", "self-enhancement", "hedonism")}
    assert tax.path("benevolence:caring") == ("growth", "self-transcendence", "benevolence", "benevolence:caring")
    assert tax.ancestors("benevolence:caring") == ["benevolence", "self-transcendence", "growth"]
    assert tax.children("universalism") == ("universalism:tolerance", "universalism:concern", "universalism:nature")
    assert tax.path("fidelity") == ("ross_duties", "fidelity")
    assert tax.path("right_to_vote")[0] == "human_rights"


def test_unknown_value_lists_close_matches():
    with pytest.raises(UnknownValueError) as exc:
        default_taxonomy().get("benevolance")
    assert "benevolence" in str(exc.value) and "closest" in str(exc.value)
    with pytest.raises(UnknownValueError, match="care-harm|care/harm"):
        default_taxonomy().get("care-harms")


def test_resolve_values_rejects_non_steerable():
    tax = default_taxonomy()
    assert len(tax.resolve_values(["all"])) == 32
    assert [v.key for v in tax.resolve_values([], ["duty"])][0] == "fidelity"
    with pytest.raises(UnknownValueError, match="no VIDB scale"):
        tax.resolve_values(["benevolence:caring"])
