"""The rules of trust and evidence as pure functions: milliseconds each."""

from services.voting.domain.consensus import Flip, Vote, cohort_names, find_cohorts, plain_majority
from services.voting.domain.evidence import (
    EvidenceParams,
    Gold,
    ModelPrediction,
    TrustCounts,
    TrustParams,
    WeighedVote,
    decide_item,
    install_weight,
)
from services.voting.domain.tally import CurrentConsensus, StoredVote, judgements

PARAMS = EvidenceParams()
TRUST = TrustParams()
KNOWN = {"Phaser", "Torpedo", "Mine"}
FRESH = TRUST.fresh_weight


def vote(install, label, weight=FRESH, voice=None, guess=None) -> WeighedVote:
    return WeighedVote(install, voice or f"origin:{install}", label, weight, guess)


def test_a_fresh_install_weighs_little_and_gains_only_from_judged_agreement():
    assert install_weight(TrustCounts(), TRUST) == FRESH
    earned = [install_weight(TrustCounts(agree=n), TRUST) for n in (1, 5, 20, 200)]
    assert (
        earned == sorted(earned) and earned[0] > FRESH and 0.95 <= earned[-1] <= 1.0
    )  # capped: nobody dominates
    assert install_weight(TrustCounts(agree=20, disagree=10), TRUST) < install_weight(
        TrustCounts(agree=5), TRUST
    )
    assert install_weight(TrustCounts(disagree=10), TRUST) <= 0.1  # a spammer weighs next to nothing
    assert install_weight(TrustCounts(disagree=40), TRUST) == 0.0
    assert install_weight(TrustCounts(agree=200), TRUST, banned=True) == 0.0
    # a moderator's judgement counts gold_factor times
    assert install_weight(TrustCounts(gold_agree=2), TRUST) == install_weight(TrustCounts(agree=6), TRUST)


def test_a_single_fresh_vote_is_withheld_and_three_independent_origins_settle_a_known_label():
    single = decide_item([vote("a", "Phaser")], known=KNOWN, params=PARAMS)
    assert not single.accepted and single.reason == "not enough evidence yet"
    three = decide_item([vote(i, "Phaser") for i in "abc"], known=KNOWN, params=PARAMS)
    assert three.accepted and three.label == "Phaser" and three.support == 3


def test_installs_behind_one_origin_speak_with_one_voice():
    swarm = [vote(f"sybil{i}", "Torpedo", voice="origin:one") for i in range(10)]
    decision = decide_item(swarm, known=KNOWN, params=PARAMS)
    assert not decision.accepted and decision.support == 1 and decision.evidence["voices"] == 1


def test_the_client_model_guess_counts_and_only_if_it_is_a_label_a_model_can_know():
    trusted = 0.8
    confirmed = decide_item([vote("a", "Phaser", trusted, guess="Phaser")], known=KNOWN, params=PARAMS)
    assert confirmed.accepted  # a trusted install that the client model agreed with
    alone = decide_item([vote("a", "Phaser", trusted)], known=KNOWN, params=PARAMS)
    assert not alone.accepted
    faked = decide_item([vote("a", "Planted", trusted, guess="Planted")], known=KNOWN, params=PARAMS)
    assert faked.evidence["model"]["confirmed"] == 0  # no model has "Planted": the guess is ignored
    # two fresh installs contradicting the model: the model's guess weighs against them
    against = decide_item(
        [vote(i, "Mine", guess="Phaser") for i in "ab"] + [vote("c", "Phaser", guess="Phaser")],
        known=KNOWN,
        params=PARAMS,
    )
    assert not against.accepted and against.reason == "contested"


def test_a_new_label_needs_trusted_installs_of_distinct_origins():
    fresh = decide_item([vote(i, "Sybil Label") for i in "abcdefghij"], known=KNOWN, params=PARAMS)
    assert not fresh.accepted and fresh.reason.startswith("new label")
    one_origin = [vote(i, "New Item", 1.0, voice="origin:x") for i in "abc"]
    assert not decide_item(one_origin, known=KNOWN, params=PARAMS).accepted
    trusted = decide_item([vote(i, "New Item", 0.8) for i in "abc"], known=KNOWN, params=PARAMS)
    assert trusted.accepted and trusted.establishes


def test_at_a_cold_start_distinct_origins_establish_the_first_labels():
    cold = decide_item([vote(i, "Phaser") for i in "abc"], known=set(), params=PARAMS, cold_start=True)
    assert cold.accepted and cold.establishes
    second = decide_item(
        [vote(i, "Torpedo") for i in "abc"], known={"Phaser"}, params=PARAMS, cold_start=True
    )
    assert second.accepted  # labels accepted at a cold start do not end it: a release or a moderator does
    assert not decide_item([vote(i, "Torpedo") for i in "abc"], known={"Phaser"}, params=PARAMS).accepted


def test_a_family_supports_what_the_item_s_voters_say_but_never_contests_or_decides():
    family = [vote(i, "Phaser", 1.0) for i in "xyz"]
    helped = decide_item([vote("a", "Phaser", 0.6)], known=KNOWN, params=PARAMS, family=family)
    assert helped.accepted and helped.evidence["family"]["scores"]["Phaser"] == PARAMS.family_cap
    look_alike = [vote(i, "Torpedo", 1.0) for i in "xyz"]
    own = [vote(i, "Phaser") for i in "abc"]
    assert decide_item(own, known=KNOWN, params=PARAMS, family=look_alike).label == "Phaser"
    assert not decide_item([], known=KNOWN, params=PARAMS, family=family).accepted


def test_a_moderator_decision_settles_the_item_whatever_the_votes():
    votes = [vote(i, "Torpedo", 1.0) for i in "abcd"]
    gold = decide_item(votes, known=KNOWN, params=PARAMS, gold=Gold("Mine", "console:1"))
    assert (gold.label, gold.accepted, gold.reason) == ("Mine", True, "settled by a moderator")
    rejected = decide_item(votes, known=KNOWN, params=PARAMS, gold=Gold(None, "console:1"))
    assert not rejected.accepted and rejected.reason == "rejected by a moderator"


def test_votes_are_judged_only_when_cast_after_the_item_settled():
    settled = {("icon", "k"): CurrentConsensus("Phaser", "accepted", 10)}
    votes = [
        StoredVote("icon", "k", "early", "Torpedo", None, seq=9),
        StoredVote("icon", "k", "agrees", "Phaser", None, seq=11),
        StoredVote("icon", "k", "flips", "Torpedo", None, seq=12),
        StoredVote("icon", "open", "x", "Phaser", None, seq=13),
    ]
    judged = {(j.install, j.agree, j.gold) for j in judgements(votes, settled, {})}
    assert judged == {("agrees", True, False), ("flips", False, False)}
    gold = {("icon", "k"): Gold("Torpedo", "console:1")}
    assert {(j.install, j.agree) for j in judgements(votes[:3], settled, gold)} == {
        ("early", True),
        ("agrees", False),
        ("flips", True),
    }


def test_installs_that_push_one_label_onto_the_same_settled_items_form_a_cohort():
    flips = [Flip(item, "Wrong", install) for item in range(4) for install in ("g1", "g2", "g3")]
    flips += [Flip(item, f"Noise {item}", "honest") for item in range(4)]
    cohorts = find_cohorts(flips, min_shared_flips=3, min_size=3)
    assert cohorts == [frozenset({"g1", "g2", "g3"})]
    assert cohort_names(cohorts) == {"g1": "g1", "g2": "g1", "g3": "g1"}


def test_plain_majority_is_most_votes_and_a_tie_goes_to_the_first_label():
    votes = [Vote("i", "a", "X", 1), Vote("i", "b", "Y", 2), Vote("j", "a", "Z", 3), Vote("j", "b", "Z", 4)]
    assert plain_majority(votes) == {"i": "X", "j": "Z"}


def test_anchor_grids_count_one_per_origin_and_none_from_a_banned_install():
    from services.voting.domain.tally import DecisionInputs, InstallTrust, decide

    slot = {"x0_rel": 0.1, "y_rel": 0.2, "w_rel": 0.05, "h_rel": 0.05}
    grid = {"resolution": "1920x1080", "slots": {"A": slot, "B": slot, "C": slot}}
    ref = ("anchor", "SPACE\x1f1.78")

    def grids(*voters):
        return [
            StoredVote(*ref, install, None, grid, origin, seq=n) for n, (install, origin) in enumerate(voters)
        ]

    def merged(votes, trust=None):
        inputs = DecisionInputs({ref: votes}, {}, trust or {}, {}, {}, anchor_min_contributors=3)
        return decide([ref], inputs, {}, TRUST)[ref]

    assert merged(grids(("a", "net1"), ("b", "net1"), ("c", "net1"))) is None  # one network, one grid
    assert merged(grids(("a", "net1"), ("b", "net2"), ("c", "net3")))["n_contributors"] == 3
    banned = {"c": InstallTrust("c", 0.0, banned=True)}
    assert merged(grids(("a", "net1"), ("b", "net2"), ("c", "net3")), banned) is None


def test_a_cold_start_ends_with_a_release_a_moderator_or_enough_accepted_labels():
    from services.voting.domain.tally import cold

    accepted = {f"Item {i}": "accepted" for i in range(9)}
    assert cold("icon", {"icon": accepted}, 10)
    assert not cold("icon", {"icon": accepted | {"Item 9": "accepted"}}, 10)
    assert not cold("icon", {"icon": {"Item 0": "published"}}, 10)
    assert not cold("knowledge", {"icon": {"Item 0": "moderator"}}, 10)  # knowledge names icon items
    assert cold("ocr", {"icon": {"Item 0": "published"}}, 10)


# --- the published model's prediction (server side, unforgeable) ------------------------------------------------

VERSION = "v3"


def predicted(label, confidence=0.95, trained_on=False, version=VERSION) -> ModelPrediction:
    return ModelPrediction(label, confidence, version, trained_on)


def test_one_fresh_vote_the_published_model_agrees_with_settles_a_known_label():
    honest = [vote("a", "Phaser", guess="Phaser")]
    without = decide_item(honest, known=KNOWN, params=PARAMS, model_version=VERSION)
    assert not without.accepted and without.wants_prediction  # it asks for the model's check
    agreed = decide_item(
        honest, known=KNOWN, params=PARAMS, model_version=VERSION, prediction=predicted("Phaser")
    )
    assert agreed.accepted and agreed.label == "Phaser" and not agreed.wants_prediction
    assert agreed.evidence["published_model"]["agrees"]
    # not from a model that trained on the item, nor below the confidence knob
    for prediction in (predicted("Phaser", trained_on=True), predicted("Phaser", confidence=0.5)):
        decision = decide_item(
            honest, known=KNOWN, params=PARAMS, model_version=VERSION, prediction=prediction
        )
        assert not decision.accepted and decision.reason == "not enough evidence yet"
    # the model supports what the item's voters say; it never decides alone
    alone = decide_item([], known=KNOWN, params=PARAMS, model_version=VERSION, prediction=predicted("Mine"))
    assert not alone.accepted and alone.label is None


def test_once_a_release_trained_on_the_item_the_version_before_it_still_vouches():
    honest = [vote("a", "Phaser", guess="Phaser")]
    before = predicted("Phaser", 0.9, version="v2")
    trained = ModelPrediction("Phaser", 0.99, VERSION, True, independent=before)
    decision = decide_item(honest, known=KNOWN, params=PARAMS, model_version=VERSION, prediction=trained)
    assert decision.accepted and decision.evidence["published_model"]["independent"]["version"] == "v2"
    # an unsure or trained-on earlier answer is no vouch; the newest answer still contradicts
    for earlier in (
        predicted("Phaser", 0.5, version="v2"),
        predicted("Phaser", version="v2", trained_on=True),
    ):
        latest = ModelPrediction("Phaser", 0.99, VERSION, True, independent=earlier)
        assert not decide_item(
            honest, known=KNOWN, params=PARAMS, model_version=VERSION, prediction=latest
        ).accepted
    against = ModelPrediction("Torpedo", 0.9, VERSION, True, independent=before)
    contradicted = decide_item(honest, known=KNOWN, params=PARAMS, model_version=VERSION, prediction=against)
    assert not contradicted.accepted and contradicted.reason.startswith("the published model says Torpedo")


def test_a_new_label_stays_held_back_whatever_the_model_says():
    planted = [vote(i, "Planted", guess="Planted") for i in "ab"]
    decision = decide_item(
        planted, known=KNOWN, params=PARAMS, model_version=VERSION, prediction=predicted("Planted")
    )
    assert not decision.accepted and decision.reason.startswith("new label")
    assert not decision.wants_prediction  # no model can know it: nothing to ask


def test_a_label_the_model_confidently_contradicts_needs_trusted_origins():
    swarm = [vote(f"sybil{i}", "Torpedo", guess="Torpedo") for i in range(10)]  # forged client guesses
    contradicted = decide_item(
        swarm, known=KNOWN, params=PARAMS, model_version=VERSION, prediction=predicted("Phaser", 0.9)
    )
    assert not contradicted.accepted
    assert contradicted.reason.startswith("the published model says Phaser (0.90): needs 2 trusted")
    trusted = [vote("t1", "Torpedo", 0.9), vote("t2", "Torpedo", 0.9)]
    accepted = decide_item(
        trusted, known=KNOWN, params=PARAMS, model_version=VERSION, prediction=predicted("Phaser", 0.9)
    )
    assert accepted.accepted and accepted.label == "Torpedo"
    # an unsure model does not block trusted installs; untrusted ones need its confident agreement
    unsure = predicted("Phaser", 0.4)
    backed = [vote("t1", "Torpedo", 1.0), vote("t2", "Torpedo", 0.9)]
    assert decide_item(backed, known=KNOWN, params=PARAMS, model_version=VERSION, prediction=unsure).accepted
    # one trusted voice on a crop the model cannot tell (below 0.5 on any label) waits for a second voice
    lone = decide_item(backed[:1], known=KNOWN, params=PARAMS, model_version=VERSION, prediction=unsure)
    assert not lone.accepted
    assert (
        lone.reason
        == "one voice, and the published model is unsure of this crop (Phaser, 0.40): needs a second"
    )
    off = EvidenceParams(model_unsure_confidence=0)
    assert decide_item(backed[:1], known=KNOWN, params=off, model_version=VERSION, prediction=unsure).accepted
    # a model that trained on the item is no judge of it, sure or not
    trained_unsure = predicted("Torpedo", 0.3, trained_on=True)
    assert decide_item(
        backed[:1], known=KNOWN, params=PARAMS, model_version=VERSION, prediction=trained_unsure
    ).accepted
    fresh = decide_item(swarm, known=KNOWN, params=PARAMS, model_version=VERSION, prediction=unsure)
    assert not fresh.accepted
    assert fresh.reason.startswith("only untrusted installs back it and the published model does not confirm")
    # ... unless it is the label the model was trained on for this very item
    repeated = decide_item(
        swarm,
        known=KNOWN,
        params=PARAMS,
        model_version=VERSION,
        prediction=predicted("Torpedo", 0.99, trained_on=True),
    )
    assert repeated.accepted
    # a model that trained on the item learned another label for it: relabelling it takes trusted installs
    trained = decide_item(
        swarm,
        known=KNOWN,
        params=PARAMS,
        model_version=VERSION,
        prediction=predicted("Phaser", 0.99, trained_on=True),
    )
    assert not trained.accepted and trained.reason.startswith("the published model says Phaser")


def test_labels_fewer_than_two_trusted_origins_back_wait_for_the_published_model():
    fresh = [vote(i, "Torpedo") for i in "abc"]
    before_any_release = decide_item(fresh, known=KNOWN, params=PARAMS)
    assert before_any_release.accepted and not before_any_release.wants_prediction
    waiting = decide_item(fresh, known=KNOWN, params=PARAMS, model_version=VERSION)
    assert not waiting.accepted and waiting.reason == "waiting for the published model's prediction"
    assert waiting.wants_prediction
    # one trusted install is checked too (the model's contradiction would need two): it waits
    one = decide_item([vote("t", "Torpedo", 1.0)], known=KNOWN, params=PARAMS, model_version=VERSION)
    assert not one.accepted and one.wants_prediction
    agreed = decide_item(
        [vote("t", "Torpedo", 1.0)],
        known=KNOWN,
        params=PARAMS,
        model_version=VERSION,
        prediction=predicted("Torpedo", 0.5),
    )
    assert agreed.accepted  # an unsure model does not hold back a trusted install
    two = [vote("t1", "Torpedo", 1.0), vote("t2", "Torpedo", 1.0)]
    trusted = decide_item(two, known=KNOWN, params=PARAMS, model_version=VERSION)
    assert trusted.accepted and not trusted.wants_prediction
    # an older version's answer is used meanwhile, and the current version is asked
    older = decide_item(
        fresh,
        known=KNOWN,
        params=PARAMS,
        model_version=VERSION,
        prediction=predicted("Torpedo", version="v2"),
    )
    assert older.accepted and older.wants_prediction


def test_the_model_s_agreement_is_the_second_voice_on_a_look_alike_crop_unless_turned_off():
    lone = [vote("t", "Phaser", 0.9, guess="Phaser")]
    family = [vote("x", "Mine", 0.9), vote("y", "Mine", 0.9)]
    agree = predicted("Phaser", 0.9)

    def on_look_alike(votes, params=PARAMS, prediction=agree):  # PARAMS: the default, lenient
        return decide_item(
            votes,
            known=KNOWN,
            params=params,
            family=family,
            family_items=1,
            model_version=VERSION,
            prediction=prediction,
        )

    strict = on_look_alike(lone, EvidenceParams(look_alike_model_voice=False))
    assert not strict.accepted and strict.reason.startswith(
        "one voice on a crop that looks like another item"
    )
    asks = on_look_alike(lone, prediction=None)
    assert not asks.accepted and asks.wants_prediction  # a trusted voter's look-alike crop is asked about too
    voiced = on_look_alike(lone)
    assert voiced.accepted and voiced.label == "Phaser"
    # not for an untrusted install: naming the look-alike twin, which the model half-believes, with a forged
    # client guess is how a farmed or fresh install would plant it
    planted = on_look_alike([vote("f", "Phaser", guess="Phaser")])
    assert not planted.accepted and planted.reason.startswith(
        "one voice on a crop that looks like another item"
    )


def test_a_trusted_correction_of_the_client_model_outweighs_installs_clicking_its_guess_through():
    params = EvidenceParams(model_dissent=0.0, model_override=0.5, confirm_shared=True)
    # three installs confirmed the client model's guess (the look-alike twin); two trusted ones corrected it
    clicked = [vote(i, "Torpedo", 0.9, guess="Torpedo") for i in "abc"]
    corrected = [vote(i, "Phaser", 0.9, guess="Torpedo") for i in "de"]
    decision = decide_item(clicked + corrected, known=KNOWN, params=params)
    assert not decision.accepted and decision.reason == "contested"
    # each side's bonus counts once: 2 x 0.9 + 0.45 against 3 x 0.9 + 0.45
    assert decision.evidence["scores"] == {"Torpedo": 3.15, "Phaser": 2.25}
    # counted per vote, the same client model's one guess would have settled the twin's name
    per_vote = decide_item(
        clicked + corrected, known=KNOWN, params=EvidenceParams(confirm_shared=False, model_override=0.0)
    )
    assert per_vote.accepted and per_vote.label == "Torpedo"
    # the correction bonus is earned: fresh installs (a swarm forging guesses to look like correctors) get none
    fresh = decide_item([vote(i, "Mine", guess="Phaser") for i in "xy"], known=KNOWN, params=params)
    assert fresh.evidence["scores"] == {"Mine": 0.7}
    # installs behind one origin correct with one voice, and one bonus
    household = [vote(i, "Phaser", 0.9, voice="origin:home", guess="Torpedo") for i in "fgh"]
    assert decide_item(household, known=KNOWN, params=params).evidence["scores"] == {"Phaser": 1.35}
    # one trusted correction alone is accepted while no published model says otherwise ...
    lone = [vote("d", "Phaser", 0.9, guess="Torpedo")]
    assert decide_item(lone, known=KNOWN, params=params).accepted
    # ... and withheld when the published model (not trained on the item) backs the guess it overrode
    against = ModelPrediction("Torpedo", 0.7, "v1", trained_on=False)
    held = decide_item(lone, known=KNOWN, params=params, prediction=against, model_version="v1")
    assert not held.accepted and held.reason.startswith("the published model says Torpedo")


def test_a_lone_ocr_correction_unlike_the_text_ocr_read_needs_a_second_voice():
    params = EvidenceParams(accept_score=0.6, lone_text_tolerance=0.2)
    known = {"Cruiser", "Battleship", "Carrier", "VIII", "VI"}
    near = decide_item([vote("a", "Cruiser", 0.9)], known=known, params=params, read_text="CrUiser")
    assert near.accepted
    far = decide_item([vote("a", "Battleship", 0.9)], known=known, params=params, read_text="CrUiser")
    assert (
        not far.accepted
        and "far from the text OCR read" in far.reason
        and "'Cruiser' is nearer" in far.reason
    )
    # two voices of distinct origins settle it: the rule is about one voice
    two = decide_item(
        [vote("a", "Battleship", 0.9), vote("b", "Battleship", 0.9)],
        known=known,
        params=params,
        read_text="CrUiser",
    )
    assert two.accepted and two.label == "Battleship"
    # garbled short texts: the nearest known text is close too
    tier = decide_item([vote("a", "VIII", 0.9)], known=known, params=params, read_text="V11I")
    assert tier.accepted
    off = EvidenceParams(accept_score=0.6, lone_text_tolerance=1.0)
    assert decide_item([vote("a", "Battleship", 0.9)], known=known, params=off, read_text="CrUiser").accepted


def test_the_refresh_gives_ocr_items_their_raw_text_and_each_kind_its_settings():
    from services.voting.domain.tally import DecisionInputs, InstallTrust, decide
    from services.voting.settings import VotingSettings

    params = VotingSettings().evidence_params()
    assert params["ocr"].lone_text_tolerance == 0.2
    assert {
        kind: params[kind].lone_text_tolerance for kind in ("icon", "knowledge", "screen")
    } == dict.fromkeys(("icon", "knowledge", "screen"))
    assert params["icon"].model_agree_confidence == 0.6
    assert params["screen"].model_agree_confidence == params["knowledge"].model_agree_confidence == 0.8
    # knowledge entries are used as they are: a lone voice needs a surer model there than elsewhere
    assert params["knowledge"].model_unsure_confidence == 0.65
    assert params["icon"].model_unsure_confidence == params["screen"].model_unsure_confidence == 0.5
    same = VotingSettings(knowledge_model_unsure_confidence=0.5).evidence_params()
    assert same["knowledge"] == same["screen"]
    trusted = InstallTrust("a", 0.9)
    for model_confidence, accepted in ((0.6, False), (0.7, True)):
        ref = ("knowledge", "0123456789abcdef")
        inputs = DecisionInputs(
            {ref: [StoredVote(*ref, "a", "Phaser", None, "net1", "Phaser")]},
            {},
            {"a": trusted},
            {},
            {"icon": {"Phaser": "published"}},
            anchor_min_contributors=3,
            predictions={ref: ModelPrediction("Phaser", model_confidence, "v1", trained_on=False)},
            model_versions={"icon": "v1"},
        )
        decision = decide([ref], inputs, params, TRUST)[ref]
        assert decision.accepted is accepted, (model_confidence, decision.reason)
        if not accepted:
            assert decision.reason.startswith("one voice, and the published model is unsure of this crop")

    def lone(raw: str, corrected: str):
        ref = ("ocr", f"Ship Type\x1f{raw}")
        inputs = DecisionInputs(
            {ref: [StoredVote(*ref, "a", corrected, None, "net1")]},
            {},
            {"a": InstallTrust("a", 0.9)},
            {},
            {"ocr": {"Cruiser": "accepted", "Battleship": "accepted"}},
            anchor_min_contributors=3,
        )
        return decide([ref], inputs, params, TRUST)[ref]

    assert lone("CrUiser", "Cruiser").accepted
    slip = lone("CrUiser", "Battleship")
    assert not slip.accepted and "'Cruiser' is nearer" in slip.reason
