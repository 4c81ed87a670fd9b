"""GPT4Tools tool-use metrics (spec §3.4) and MME metrics on hand-made prediction/GT pairs.

Each test pins one rule of GPT4Tools' ``evaluate_result.py``: implementing that rule differently
(anchoring a regex, re-stripping argument pieces, unsmoothed BLEU, penalising surplus steps in IoU, …)
changes a number asserted here.
"""

from __future__ import annotations

import math

import pytest

from ibllm_agent.evaluation.metrics import (
    aggregate,
    args_flags,
    bleu1,
    call_args_score,
    mme_label,
    mme_report,
    score_sample,
)

YES = "Thought: Do I need to use a tool? Yes"
NO = "Thought: Do I need to use a tool? No"


def tool_out(*calls: tuple[str, str], final: str | None = None) -> str:
    text = "".join(f"{YES}\nAction: {a}\nAction Input: {i}\nObservation: x\n" for a, i in calls)
    if final is not None:
        text += f"{NO}\nAI: {final}\n"
    return text


GT1 = tool_out(("Get Photo Description", "image/abc.png"))
EXACT = 1 - 2e-9  # pycocoevalcap's BLEU-1 of an exact one-word match (h words: 1 - 2e-9 / h)


# -- BLEU-1 -----------------------------------------------------------------------------------------
def test_bleu1_exact_match_is_smoothed_below_one():
    assert bleu1("car", "car") == pytest.approx(EXACT, abs=1e-14)
    assert bleu1("red car", "red car") == pytest.approx(1 - 1e-9, abs=1e-14)
    assert bleu1("red car", "red car") < 1.0


def test_bleu1_textbook_half_is_just_below_half():
    # 1 of 2 unigrams right at equal length: (1+1e-15)/(2+1e-9) times the smoothed ratio's penalty.
    s = bleu1("cat dog", "cat bird")
    assert s == pytest.approx(0.4999999995, abs=1e-13)
    assert s < 0.5


def test_bleu1_clips_repeated_words_and_is_case_sensitive():
    assert bleu1("the cat", "the the the") == pytest.approx(1 / 3, abs=1e-9)  # min(3, 1) correct of 3
    assert bleu1("Cat", "cat") == pytest.approx(0.0, abs=1e-5)


def test_bleu1_brevity_penalty_and_empty_candidate():
    # h=1 < r=2: precision 1 times exp(1 - 2/1).
    assert bleu1("red car", "red") == pytest.approx(math.exp(-1), rel=1e-8)
    assert bleu1("red car", "") == 0.0
    # whitespace tokens: surrounding spaces do not matter
    assert bleu1(" red car", "red car  ") == pytest.approx(1 - 1e-9, abs=1e-14)


# -- arguments --------------------------------------------------------------------------------------
def test_args_piece_count_must_match():
    assert call_args_score("a.png, cat", "a.png, cat, dog") == 0.0
    assert call_args_score("a.png, cat", "a.png cat") == 0.0


def test_args_png_piece_accepts_any_png_name_but_nothing_else():
    assert call_args_score("image/abc.png", "other/zzz.png") == 1.0
    # a missing .png zeroes the whole call even though the other piece is perfect
    assert call_args_score("image/abc.png, cat", "image/abc.jpg, cat") == 0.0
    assert call_args_score("image/abc.png, cat", "image/abc.PNG, cat") == 0.0  # case-sensitive


def test_args_call_score_is_mean_of_pieces_and_pieces_are_not_restripped():
    # " cat" vs "cat": BLEU tokenises on whitespace, so the leading space is harmless
    assert call_args_score("a.png, cat", "b.png,cat") == pytest.approx((1 + EXACT) / 2, abs=1e-14)
    # a GT piece without .png is BLEU-scored even when the prediction holds a .png there
    assert call_args_score("a.png, cat", "a.png, cat.png") == pytest.approx(0.5, abs=1e-5)


def test_args_flags_cover_max_length_with_zero_past_the_shorter():
    flags, present = args_flags(["a.png"], ["a.png", "b.png"])
    assert flags == [1.0, 0.0] and present == [1.0, 0.0]
    flags, present = args_flags(["a.png", "b.png"], [])
    assert flags == [0.0, 0.0] and present == [1.0, 1.0]


# -- tool samples -----------------------------------------------------------------------------------
def test_perfect_tool_prediction():
    s = score_sample(GT1, tool_out(("Get Photo Description", "image/zzz.png")))
    assert (s.SR_t, s.SR_act, s.SR_args, s.SR, s.IoU, s.tool) == (1.0, 1.0, 1.0, 1.0, 1.0, True)


def test_tool_sample_needs_both_markers_in_gt():
    # "Action:" alone makes it a no-tool sample: a tool-calling prediction then fails the No rule.
    gt = f"{YES}\nAction: Get Photo Description\n"
    s = score_sample(gt, tool_out(("Get Photo Description", "image/a.png")))
    assert s.tool is False and s.SR == 0.0


def test_prediction_is_stripped_as_a_whole_and_regexes_are_unanchored():
    pred = "   \n  well... " + tool_out(("Get Photo Description", "image/a.png")) + "\n\n"
    assert score_sample(GT1, pred).SR == 1.0


def test_regexes_are_case_sensitive_and_captures_stripped():
    wrong_case = "thought: Do I need to use a tool? Yes\naction: Get Photo Description\nAction Input: a.png"
    s = score_sample(GT1, wrong_case)
    assert s.SR_t == 0.0 and s.SR_act == 0.0 and s.SR_args == 1.0
    padded = f"{YES}   \nAction: Get Photo Description   \nAction Input:    image/a.png   "
    assert score_sample(GT1, padded).SR == 1.0


def test_action_input_stops_at_newline():
    gt = tool_out(("Detect the Give Object", "image/a.png, red car"))
    pred = f"{YES}\nAction: Detect the Give Object\nAction Input: image/a.png,\nred car"
    s = score_sample(gt, pred)
    # pieces "image/a.png" and "" against " red car": BLEU of an empty candidate is 0
    assert s.SR_args == pytest.approx(0.5, abs=1e-9) and s.SR_args < 0.5 + 1e-12


def test_action_names_match_exactly():
    s = score_sample(GT1, tool_out(("get photo description", "image/a.png")))
    assert s.SR_act == 0.0 and s.SR == 0.0
    # arguments are still scored when the action is wrong
    assert s.SR_args == 1.0


def test_gt_thoughts_truncated_to_the_number_of_gt_actions():
    gt = tool_out(("Get Photo Description", "image/a.png"), final="A cat.")  # thoughts: Yes, No
    s = score_sample(gt, tool_out(("Get Photo Description", "image/b.png")))
    assert s.SR_t == 1.0 and s.SR == 1.0


def test_trailing_no_thought_is_dropped_only_when_one_more_than_actions():
    pred = tool_out(("Get Photo Description", "image/b.png"), final="done")  # Yes, No
    assert score_sample(GT1, pred).SR_t == 1.0
    # lower-case "no" is not dropped: the two positions give [1, 0]
    pred_low = tool_out(("Get Photo Description", "image/b.png")) + "Thought: Do I need to use a tool? no\nAI: x"
    assert score_sample(GT1, pred_low).SR_t == 0.5
    # two surplus thoughts: nothing dropped
    pred_two = pred + f"{NO}\nAI: again"
    assert score_sample(GT1, pred_two).SR_t == pytest.approx(1 / 3)


def test_positions_past_the_shorter_list_score_zero():
    pred = tool_out(("Get Photo Description", "image/a.png"), ("Segment the Image", "image/b.png"))
    s = score_sample(GT1, pred)
    assert s.SR_t == 0.5 and s.SR_act == 0.5 and s.SR_args == 0.5 and s.SR == 0.0


def test_iou_does_not_penalise_surplus_predicted_steps():
    pred = tool_out(("Get Photo Description", "image/a.png"), ("Segment the Image", "image/b.png"))
    assert score_sample(GT1, pred).IoU == 1.0
    # missing GT steps do count
    gt2 = tool_out(("Get Photo Description", "image/a.png"), ("Segment the Image", "image/b.png"))
    assert score_sample(gt2, tool_out(("Get Photo Description", "image/a.png"))).IoU == 0.5


def test_iou_uses_argument_scores_as_flags():
    gt = tool_out(("Detect the Give Object", "image/a.png, red car"))
    pred = tool_out(("Detect the Give Object", "image/a.png, red"))
    call = (1 + math.exp(-1)) / 2
    s = score_sample(gt, pred)
    assert s.SR_args == pytest.approx(call, rel=1e-8)
    assert s.IoU == pytest.approx((1 + 1 + call) / 3, rel=1e-8)
    assert s.SR == 1.0  # call ≥ 0.5


def test_sr_requires_args_at_least_half():
    gt = tool_out(("Answer Question About The Image", "cat dog"))
    s = score_sample(gt, tool_out(("Answer Question About The Image", "cat bird")))
    assert s.SR_t == 1.0 and s.SR_act == 1.0
    assert s.SR_args == pytest.approx(0.4999999995, abs=1e-13)
    assert s.SR == 0.0  # the smoothed "half" misses the >= 0.5 test


def test_sr_requires_every_thought_and_action():
    gt2 = tool_out(("Edge Detection On Image", "image/a.png"), ("Generate Image Condition On Canny Image", "image/b.png, a cat"))
    pred = tool_out(("Edge Detection On Image", "image/a.png"), ("Generate Image Condition On Depth", "image/b.png, a cat"))
    s = score_sample(gt2, pred)
    assert s.SR_act == 0.5 and s.SR_args > 0.99 and s.SR == 0.0


# -- no-tool samples --------------------------------------------------------------------------------
GT_NO = f"{NO}\nAI: Paris is the capital of France.\n"


def test_no_tool_correct_answer_scores_one_regardless_of_answer_text():
    s = score_sample(GT_NO, f"{NO}\nAI: Something else entirely.")
    assert (s.SR_t, s.SR_act, s.SR_args, s.SR, s.IoU, s.tool) == (1.0, 1.0, 1.0, 1.0, 1.0, False)


def test_no_tool_needs_ai_prefix_with_space_after_strip():
    s = score_sample(GT_NO, f"{NO}\nAI: ")  # stripped → "AI:" at the end: no "AI: " match
    assert s.SR_t == 0.0 and s.SR == 0.0 and s.SR_act == 0.0 and s.SR_args == 0.0
    assert s.IoU == 1.0  # IoU uses the thought flags before the forcing
    assert score_sample(GT_NO, f"{NO}\nOpenAI: x").SR == 1.0  # unanchored "AI: " match


def test_no_tool_first_thought_must_be_no():
    s = score_sample(GT_NO, f"{YES}\nAction: Get Photo Description\nAction Input: a.png")
    assert s.SR_t == 0.0 and s.SR == 0.0 and s.IoU == 0.0
    s = score_sample(GT_NO, "AI: Paris.")  # no thought at all
    assert s.SR_t == 0.0 and s.IoU == 0.0


def test_no_tool_thought_flags_are_not_truncated():
    # [No, Yes] vs [No]: flags [1, 0] → SR_t 0.5 (not forced: first is No and AI: exists), SR 0
    s = score_sample(GT_NO, f"{NO}\nAI: hi\n{YES}\nAI: again")
    assert s.SR_t == 0.5 and s.SR == 0.0 and s.SR_act == 0.0 and s.IoU == 1.0


# -- aggregation and MME ----------------------------------------------------------------------------
def test_aggregate_means_and_n():
    scores = [score_sample(GT1, tool_out(("Get Photo Description", "a.png"))), score_sample(GT_NO, "nothing")]
    r = aggregate(scores)
    assert r == {"SR_t": 0.5, "SR_act": 0.5, "SR_args": 0.5, "SR": 0.5, "IoU": 0.5, "n": 2}
    assert aggregate([])["n"] == 0


@pytest.mark.parametrize(
    ("answer", "label"),
    [("Yes", "yes"), ("yes.", "yes"), ("No, there is not.", "no"), ("  NO  ", "no"), ("not sure", "no"),
     ("There is a cat", "other"), ("Maybe yes", "other"), ("nono yes", "no"), ("", "other")],
)
def test_mme_label(answer, label):
    assert mme_label(answer) == label


def test_mme_accuracy_plus_counts_images_with_both_right():
    items = [
        {"image": "a.png", "answer": "Yes", "output": "Yes"},
        {"image": "a.png", "answer": "No", "output": "No"},
        {"image": "b.png", "answer": "Yes", "output": "Yes"},
        {"image": "b.png", "answer": "No", "output": "Yes"},
        {"image": "c.png", "answer": "Yes", "output": "perhaps", "category": "color"},
        {"image": "c.png", "answer": "No", "output": "no", "category": "color"},
    ]
    r = mme_report(items)
    assert r["accuracy"] == pytest.approx(4 / 6) and r["accuracy_plus"] == pytest.approx(1 / 3)
    assert r["n"] == 6 and r["images"] == 3
    assert r["categories"]["all"]["score"] == pytest.approx(100 * (3 / 4 + 1 / 2))
    assert r["categories"]["color"]["accuracy_plus"] == 0.0
    assert r["total_score"] == pytest.approx(125.0 + 50.0)
