"""The consensus rules as pure functions: milliseconds, no broker."""

from services.voting.domain.consensus import (
    ConsensusParams,
    Vote,
    find_cohorts,
    plain_majority,
    robust_consensus,
    settled_labels,
)
from services.voting.domain.derived import anchor_consensus, cap_screen_types, ocr_corrections
from tools.simulator.workload import WorkloadSpec, accepted_labels, generate, score


def votes(*triples):
    return [Vote(item, install, label, seq) for seq, (item, install, label) in enumerate(triples)]


def test_plain_majority_counts_installs_and_breaks_ties_by_first_vote():
    result = plain_majority(
        votes(("x", "a", "B"), ("x", "b", "A"), ("y", "a", "A"), ("y", "b", "A"), ("y", "c", "B"))
    )
    assert result == {"x": "B", "y": "A"}


def test_an_item_needs_two_independent_agreeing_voters():
    result = robust_consensus(
        votes(("x", "a", "A"), ("y", "a", "B"), ("y", "b", "B")), ConsensusParams(label_space=50)
    )
    assert not result.decisions["x"].accepted
    assert result.decisions["x"].reason == "too few independent voters"
    assert result.decisions["y"].accepted and result.decisions["y"].label == "B"


def test_a_contested_item_is_withheld_rather_than_guessed():
    result = robust_consensus(
        votes(("x", "a", "A"), ("x", "b", "A"), ("x", "c", "B"), ("x", "d", "B")),
        ConsensusParams(label_space=50),
    )
    assert not result.decisions["x"].accepted


def test_spammers_lose_their_weight():
    triples = []
    for item in range(40):
        triples += [(item, "h1", f"L{item}"), (item, "h2", f"L{item}"), (item, "h3", f"L{item}")]
        triples.append((item, "spam", f"L{(item * 7 + 3) % 40}"))
    result = robust_consensus(votes(*triples), ConsensusParams(label_space=40))
    assert result.reliability["spam"] < 0.2 < 0.9 < min(result.reliability[h] for h in ("h1", "h2", "h3"))
    assert all(d.accepted for d in result.decisions.values())


def test_settled_labels_and_cohorts_that_push_one_label_onto_settled_items():
    triples = []
    for item in range(6):
        triples += [(item, "h1", "True"), (item, "h2", "True"), (item, "h3", "True")]
    for item in range(6):
        triples += [(item, member, "Fake") for member in ("g1", "g2", "g3", "g4", "g5")]
    all_votes = votes(*triples)
    settled = settled_labels(all_votes, 3)
    assert {label for label, _ in settled.values()} == {"True"}
    assert find_cohorts(all_votes, settled, 3, 3) == [frozenset({"g1", "g2", "g3", "g4", "g5"})]
    result = robust_consensus(all_votes, ConsensusParams(label_space=100))
    assert all(not d.accepted or d.label == "True" for d in result.decisions.values())


def test_on_a_simulated_workload_the_robust_method_meets_its_targets_where_majority_fails():
    workload = generate(WorkloadSpec(seed=11))
    all_votes = [Vote(v.crop, v.install, v.label, v.seq) for v in workload.votes]
    majority = score(workload, plain_majority(all_votes))
    result = robust_consensus(all_votes, ConsensusParams(label_space=workload.spec.classes))
    robust = score(workload, accepted_labels(result.decisions, result.decisions))
    assert robust.precision >= 0.99 and robust.coverage >= 0.95 and robust.attacked_safe >= 0.90
    assert majority.attacked_safe < 0.5
    assert {frozenset(workload.group)} == set(result.cohorts)


def test_ocr_map_keeps_only_real_corrections():
    assert ocr_corrections({"Ship Type\x1fHeavy Crulser": "Heavy Cruiser", "Ship Tier\x1fT6": "T6"}) == {
        "Heavy Crulser": "Heavy Cruiser"
    }


def test_anchor_medians_per_slot_with_a_minimum_of_contributors():
    def grid(x, count=4):
        slot = {"x0_rel": x, "y_rel": 0.5, "w_rel": 0.1, "h_rel": 0.1, "count": count}
        return {"resolution": "1920x1080", "slots": {"A": slot, "B": slot, "C": slot}}

    assert anchor_consensus("SPACE\x1f1.78", [grid(0.1), grid(0.2)], 3) is None
    merged = anchor_consensus("SPACE\x1f1.78", [grid(0.1), grid(0.2), grid(0.9, 5)], 3)
    assert merged["slots"]["A"] == {"x0_rel": 0.2, "y_rel": 0.5, "w_rel": 0.1, "h_rel": 0.1, "count": 4}
    assert (merged["type"], merged["aspect"], merged["n_contributors"]) == ("SPACE", 1.78, 3)


def test_screen_types_keep_all_up_to_30_and_cap_at_150():
    accepted = {f"{i:064x}": "TRAITS" for i in range(200)} | {f"{i:064x}": "BOFFS" for i in range(1000, 1030)}
    kept = cap_screen_types(accepted)
    assert sum(1 for t in kept.values() if t == "TRAITS") == 150
    assert sum(1 for t in kept.values() if t == "BOFFS") == 30
