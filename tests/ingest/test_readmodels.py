"""The read models' pure answers."""

from services.ingest.readmodels import labels_answer


def test_labels_are_in_code_point_order_whatever_a_database_collation_would_say():
    """``/config/labels`` used to be ordered by SQL ``ORDER BY label``: its order followed the collation (en_US
    puts ``a`` before ``B``); ``sorted()`` gives the same answer on every database."""
    answer = labels_answer({"1": "b", "2": "B", "3": "\u00e9", "4": "a", "5": "b"}, {"6": "A_NEW"})
    assert answer["icon_labels"] == ["B", "a", "b", "\u00e9"]
    assert answer["screen_types"][0] == "A_NEW"
