import math

import pytest

from captioner.evaluation.metrics import bleu_scores, distinct_share, oracle_bleu


def test_perfect_match_scores_one():
    refs = [[["a", "red", "circle", "on", "gray"]], [["two", "blue", "squares", "here", "now"]]]
    hyps = [["a", "red", "circle", "on", "gray"], ["two", "blue", "squares", "here", "now"]]
    assert bleu_scores(refs, hyps) == {"bleu1": 1.0, "bleu2": 1.0, "bleu3": 1.0, "bleu4": 1.0}


def test_matches_hand_computed_value():
    # hypothesis: "the cat sat on the mat" (6 words); reference: "the cat is on the mat" (6 words)
    # clipped matches: 1-grams 5/6, 2-grams 3/5 (the cat, on the, the mat), 3-grams 1/4 (on the mat), 4-grams 0/3
    refs = [[["the", "cat", "is", "on", "the", "mat"]]]
    hyps = [["the", "cat", "sat", "on", "the", "mat"]]
    scores = bleu_scores(refs, hyps)
    assert scores["bleu1"] == pytest.approx(5 / 6)
    assert scores["bleu2"] == pytest.approx(math.sqrt(5 / 6 * 3 / 5))
    assert scores["bleu3"] == pytest.approx((5 / 6 * 3 / 5 * 1 / 4) ** (1 / 3))
    assert scores["bleu4"] == pytest.approx(0.0, abs=1e-9)  # no 4-gram matches, no smoothing


def test_brevity_penalty_and_multiple_references():
    # Closest reference length is 4 (not 2), hypothesis has 3 words -> BP = exp(1 - 4/3).
    refs = [[["red", "circle", "on", "gray"], ["a", "b", "c", "d", "e", "f"]]]
    hyps = [["red", "circle", "on"]]
    assert bleu_scores(refs, hyps)["bleu1"] == pytest.approx(math.exp(1 - 4 / 3))


def test_corpus_level_pools_counts_rather_than_averaging():
    refs = [[["a", "b"]], [["c", "d"]]]
    hyps = [["a", "b"], ["x", "y"]]
    assert bleu_scores(refs, hyps)["bleu1"] == pytest.approx(0.5)


def test_oracle_scores_one_reference_against_the_rest():
    refs = [[["a", "b", "c", "d"], ["a", "b", "c", "d"], ["e", "f", "g", "h"]]]
    assert oracle_bleu(refs)["bleu4"] == pytest.approx(1.0)


def test_distinct_share():
    assert distinct_share(["a", "a", "a", "a"]) == 0.25
    assert distinct_share(["a", "b"]) == 1.0


def test_mismatched_lengths_are_an_error():
    with pytest.raises(ValueError):
        bleu_scores([[["a"]]], [])


def test_vqa_accuracy_matches_hand_computed_values():
    from captioner.evaluation.metrics import vqa_accuracy

    ten = ["red"] * 3 + ["blue"] * 7
    # 3 of 10 said red: leaving out one of the three gives 2/3, leaving out one of the other seven gives 1.
    assert vqa_accuracy("red", ten) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)  # 0.9
    two = ["red"] * 2 + ["blue"] * 8
    assert vqa_accuracy("Red.", two) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)  # 0.6
    assert vqa_accuracy("blue", ten) == 1.0 and vqa_accuracy("green", ten) == 0.0
    assert vqa_accuracy("two", ["2"]) == 1.0 and vqa_accuracy("3", ["2"]) == 0.0


def test_accuracy_table_and_blind_baselines():
    from captioner.data import QARecord
    from captioner.evaluation.metrics import accuracy_table, blind_baselines

    def qa(question, answer, kind):
        return QARecord("x.png", question, (answer,), kind, "yes/no" if answer in ("yes", "no") else "other")

    train = (
        [qa("is it red?", "no", "exist")] * 3
        + [qa("what color?", "blue", "color")] * 4
        + [qa("is it big?", "yes", "exist")]
    )
    test = [
        qa("is it red?", "no", "exist"),
        qa("what color?", "green", "color"),
        qa("is it big?", "yes", "exist"),
        qa("what shape?", "circle", "shape"),
    ]
    table = accuracy_table(test, ["no", "green", "no", "circle"])
    assert table["accuracy"] == 0.75 and table["questions"] == 4
    assert (
        table["by_answer_type"]["yes/no"]["accuracy"] == 0.5 and table["by_question_type"]["shape"]["accuracy"] == 1.0
    )
    blind = blind_baselines(train, test)
    assert blind["always_yes"] == 0.25
    assert blind["most_frequent"] == 0.0  # "blue" answers nothing here
    assert blind["question_prior"] == 0.5  # "no" and "yes" right; "blue" for colour; unseen question -> "blue"
    assert blind["photo_prior"] == 0.0  # every question is about x.png, whose most frequent training answer is "blue"
    assert table["interval_95"] == pytest.approx(1.96 * (0.75 * 0.25 / 4) ** 0.5)  # normal approximation, 0/1 scores


def test_the_photo_prior_answers_what_training_said_about_the_same_photo():
    from captioner.data import QARecord
    from captioner.evaluation.metrics import blind_baselines

    train = [
        QARecord("d/a.jpg", "is it a dog?", ("yes",)),
        QARecord("d/b.jpg", "is it a cat?", ("no",)),
        QARecord("d/b.jpg", "is it red?", ("no",)),
        QARecord("d/c.jpg", "is it big?", ("no",)),
    ]
    test = [
        QARecord("other/a.jpg", "could this be dog?", ("yes",)),
        QARecord("d/b.jpg", "is it blue?", ("yes",)),
        QARecord("d/new.jpg", "is it a cow?", ("no",)),
    ]
    # a.jpg -> "yes" (right, whatever the folder), b.jpg -> "no" (wrong), new.jpg unseen -> most frequent, "no" (right)
    assert blind_baselines(train, test)["photo_prior"] == pytest.approx(2 / 3)


def test_train_overlap_groups_questions_by_photo_and_by_question_text_asked_in_training():
    from captioner.data import QARecord
    from captioner.evaluation.metrics import accuracy_table, train_overlap

    train = [QARecord("d/a.jpg", "Is it a dog ?", ("yes",)), QARecord("d/b.jpg", "is it red?", ("no",))]
    test = [
        QARecord("other/a.jpg", "is  it a DOG?", ("no",)),  # photo a (by file name), text asked (case, spaces, "?")
        QARecord("d/a.jpg", "is it blue?", ("yes",)),  # photo a, new text
        QARecord("d/c.jpg", "is it red?", ("yes",)),  # unseen photo, text asked: its twin's answer was "no"
        QARecord("d/c.jpg", "is it big?", ("no",)),
    ]  # unseen photo, new text
    groups = train_overlap(train, test)
    assert groups["by_photo"] == ["seen in training", "seen in training", "unseen", "unseen"]
    assert groups["by_photo_and_question"] == [
        "seen photo, question asked in training",
        "seen photo, new question",
        "unseen photo, question asked in training",
        "unseen photo, new question",
    ]
    table = accuracy_table(test, ["yes", "yes", "no", "no"], groups)  # the twins' training answers copied: both wrong
    assert {name: g["accuracy"] for name, g in table["by_photo_and_question"].items()} == {
        "seen photo, question asked in training": 0.0,
        "seen photo, new question": 1.0,
        "unseen photo, question asked in training": 0.0,
        "unseen photo, new question": 1.0,
    }


def test_diversity_counts_distinct_captions_words_and_the_most_common():
    from captioner.evaluation.metrics import diversity

    captions = ["a dog runs", "a dog runs", "a dog runs", "a cat sits", "two dogs play"]
    result = diversity(captions, top=1)
    assert result == {"distinct_captions": 0.6, "distinct_words": 8, "top1_share": 0.6, "repeated_bigram_share": 0.0}
    assert diversity(captions, top=2)["top2_share"] == 0.8
    repeats = diversity(["a man is riding a bike on a bike", "a man in a red shirt", "a a"])
    assert repeats["repeated_bigram_share"] == 1 / 3  # "a bike" twice; "in a" once; a single pair cannot repeat
