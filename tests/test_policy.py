from gateway.assessment import Assessment, BlurType, CervixFinding, ExposureFinding, FocusFinding
from gateway.config import PolicyConfig
from gateway.policy import Policy
from gateway.protocol import Outcome, Reason

DEV = ("site", "dev")


def assessment(
    p: float, found: bool = True, dark: bool = False, bright: bool = False, blur: BlurType = "defocus"
) -> Assessment:
    return Assessment(
        CervixFinding(found, (0.2, 0.2, 0.8, 0.8) if found else None, 0.9 if found else 0.0),
        FocusFinding(p, p * 100, blur),
        ExposureFinding(30.0 if dark else 120.0, 0.0, 0.5 if bright else 0.0, dark, bright),
    )


def test_sharp_is_accepted_without_reasons() -> None:
    d = Policy(PolicyConfig()).decide(DEV, "a", assessment(0.9))
    assert (d.outcome, d.reasons, d.focus_label) == (Outcome.ACCEPT, [], "sharp")


def test_borderline_band_accepts_with_a_reason() -> None:
    policy = Policy(PolicyConfig(sharp_threshold=0.5, borderline_band=0.1))
    d = policy.decide(DEV, "a", assessment(0.45))
    assert (d.outcome, d.reasons, d.focus_label) == (Outcome.ACCEPT, [Reason.BORDERLINE_FOCUS], "not_sharp")
    d = policy.decide(DEV, "b", assessment(0.39))
    assert (d.outcome, d.reasons) == (Outcome.RECAPTURE, [Reason.OUT_OF_FOCUS, Reason.DEFOCUS])
    assert d.guidance and "focus" in d.guidance[0]


def test_the_blur_type_is_a_reason_and_sets_the_guidance() -> None:
    policy = Policy(PolicyConfig())
    motion = policy.decide(None, "a", assessment(0.1, blur="motion"))
    assert (motion.outcome, motion.reasons) == (Outcome.RECAPTURE, [Reason.OUT_OF_FOCUS, Reason.MOTION_BLUR])
    assert motion.guidance == ["Hold the phone still while the photo is taken: movement blurred it."]
    defocus = policy.decide(None, "b", assessment(0.1, blur="defocus"))
    assert defocus.reasons == [Reason.OUT_OF_FOCUS, Reason.DEFOCUS]
    assert defocus.guidance == ["Tap the cervix to focus before taking the photo: it is out of focus."]
    # a sharp or borderline photo has no blur type among its reasons, whatever the measure said
    assert policy.decide(None, "c", assessment(0.9, blur="motion")).reasons == []
    assert policy.decide(None, "d", assessment(0.45, blur="motion")).reasons == [Reason.BORDERLINE_FOCUS]


def test_each_problem_is_a_reason_with_guidance() -> None:
    d = Policy(PolicyConfig()).decide(None, "a", assessment(0.1, found=False, dark=True))
    assert d.outcome is Outcome.RECAPTURE
    assert d.reasons == [Reason.CERVIX_NOT_FOUND, Reason.OUT_OF_FOCUS, Reason.DEFOCUS, Reason.TOO_DARK]
    assert len(d.guidance) == 3
    d = Policy(PolicyConfig()).decide(None, "a", assessment(0.9, bright=True))
    assert d.reasons == [Reason.OVEREXPOSED]


def test_recapture_limit_accepts_the_best_photo_of_the_run() -> None:
    policy = Policy(PolicyConfig(max_consecutive_recaptures=2))
    assert policy.decide(DEV, "a", assessment(0.10)).outcome is Outcome.RECAPTURE
    assert policy.decide(DEV, "b", assessment(0.30)).outcome is Outcome.RECAPTURE
    assert policy.decide(("site", "other"), "x", assessment(0.1)).outcome is Outcome.RECAPTURE  # separate run
    d = policy.decide(DEV, "c", assessment(0.20))
    assert d.outcome is Outcome.ACCEPT
    assert d.reasons == [Reason.RECAPTURE_LIMIT, Reason.OUT_OF_FOCUS, Reason.DEFOCUS]
    assert d.best_image_id == "b"
    # the run starts over
    assert policy.decide(DEV, "d", assessment(0.1)).outcome is Outcome.RECAPTURE


def test_an_accept_ends_the_run_and_idle_devices_start_over() -> None:
    now = [0.0]
    policy = Policy(PolicyConfig(max_consecutive_recaptures=1, run_timeout_s=60), clock=lambda: now[0])
    assert policy.decide(DEV, "a", assessment(0.1)).outcome is Outcome.RECAPTURE
    assert policy.decide(DEV, "b", assessment(0.9)).outcome is Outcome.ACCEPT
    assert policy.decide(DEV, "c", assessment(0.1)).outcome is Outcome.RECAPTURE
    now[0] = 120.0
    assert policy.decide(DEV, "d", assessment(0.1)).outcome is Outcome.RECAPTURE  # idle: new run


def test_check_mode_never_gives_up() -> None:
    policy = Policy(PolicyConfig(max_consecutive_recaptures=0))
    assert all(policy.decide(None, str(i), assessment(0.1)).outcome is Outcome.RECAPTURE for i in range(5))
    assert policy.decide(DEV, "x", assessment(0.1)).reasons[0] is Reason.RECAPTURE_LIMIT
