import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.protocol import (
    Outcome,
    Reason,
    RecaptureMessage,
    TopicError,
    Topics,
    VerdictMessage,
    derive_image_id,
    image_id_from_digest,
    quote_id,
    resolve_image_id,
)

topics = Topics("colposcopy")


def test_parses_both_image_topic_forms() -> None:
    t5 = topics.parse_image_topic("colposcopy/clinic-a/eva-07/images")
    assert (t5.site, t5.device, t5.image_id) == ("clinic-a", "eva-07", None)
    t3 = topics.parse_image_topic("colposcopy/clinic-a/eva-07/images/IMG_0042.jpg")
    assert (t3.site, t3.device, t3.image_id) == ("clinic-a", "eva-07", "IMG_0042.jpg")


@pytest.mark.parametrize("level", ["", "bad id", "-dash", "x" * 65, "caf\u00e9", "a\nb"])
def test_an_invalid_id_in_the_topic_is_kept_to_be_answered(level: str) -> None:
    parsed = topics.parse_image_topic(f"colposcopy/clinic-a/eva/images/{level}")
    assert (parsed.site, parsed.device, parsed.image_id, parsed.invalid_image_id) == ("clinic-a", "eva", None, level)


def test_the_image_id_property_wins_over_the_topic_and_invalid_ids_are_quoted() -> None:
    digest = "ab" * 32
    derived = image_id_from_digest(digest)
    with_id = topics.parse_image_topic("colposcopy/s/d/images/in-topic")
    bad_in_topic = topics.parse_image_topic("colposcopy/s/d/images/bad id")
    plain = topics.parse_image_topic("colposcopy/s/d/images")
    assert resolve_image_id(plain, None, digest) == (derived, None)
    assert resolve_image_id(with_id, None, digest) == ("in-topic", None)
    assert resolve_image_id(with_id, "from-property", digest) == ("from-property", None)
    assert resolve_image_id(bad_in_topic, "from-property", digest) == ("from-property", None)
    image_id, why = resolve_image_id(bad_in_topic, None, digest)
    assert image_id == derived and why is not None and "image id in the topic 'bad id'" in why
    image_id, why = resolve_image_id(with_id, "../x", digest)
    assert image_id == derived and why is not None and "image-id user property '../x'" in why


def test_quoted_ids_are_printable_ascii_and_cut() -> None:
    assert quote_id("IMG-1") == "'IMG-1'"
    assert quote_id("caf\u00e9\n\u202e") == "'caf\\xe9\\n\\u202e'"
    long = quote_id("y" * 500)
    assert long == "'" + "y" * 64 + "' (cut, 500 characters)"
    assert all(c.isascii() and c.isprintable() for c in quote_id("\x00\x1b[31m\ud800\U0001f600"))


@pytest.mark.parametrize(
    "topic",
    [
        "other/clinic-a/eva/images",
        "colposcopy/clinic-a/eva/verdicts",
        "colposcopy/clinic-a/images",
        "colposcopy/gateways/eva/images",
        "colposcopy//eva/images",
        "colposcopy/clinic a/eva/images",
        "colposcopy/clinic-a/" + "x" * 65 + "/images",
        "colposcopy/clinic-a/eva/images/a/b",
        "colposcopy/+/eva/images",
        "colposcopy/clinic-a/.hidden/images",
    ],
)
def test_rejects_topics_outside_the_contract(topic: str) -> None:
    with pytest.raises(TopicError):
        topics.parse_image_topic(topic)


@given(st.text(max_size=300))
def test_topic_parsing_never_fails_otherwise(topic: str) -> None:
    try:
        parsed = topics.parse_image_topic(topic)
    except TopicError:
        return
    assert topics.images(parsed.site, parsed.device) in topic


def test_response_topic_must_stay_in_the_devices_namespace() -> None:
    ok = topics.response_topic_allowed
    assert ok("colposcopy/s/d/replies/abc", "s", "d")
    assert ok("colposcopy/s/d/verdicts", "s", "d")
    assert not ok("colposcopy/s/other/verdicts", "s", "d")  # another device
    assert not ok("colposcopy/s/d", "s", "d")  # not under it
    assert not ok("colposcopy/s/dd/verdicts", "s", "d")  # prefix trick
    assert not ok("colposcopy/s/d/images", "s", "d")  # would feed the gateway its own verdicts
    assert not ok("colposcopy/s/d/images/x", "s", "d")
    assert not ok("colposcopy/s/d/#", "s", "d")
    assert not ok("colposcopy/s/d//x", "s", "d")
    assert not ok("colposcopy/s/d/" + "x" * 300, "s", "d")
    assert not ok("colposcopy/s/d/recapture", "s", "d")  # the ACL lets devices read replies/ and verdicts only
    assert not ok("colposcopy/s/d/replies", "s", "d")
    assert not ok("colposcopy/s/d/replies/\ud800", "s", "d")  # an unpaired surrogate: refused, not a crash


def test_derived_image_id_is_stable_and_valid() -> None:
    a = derive_image_id(b"photo")
    assert a == derive_image_id(b"photo") != derive_image_id(b"photo2")
    assert topics.parse_image_topic(f"colposcopy/s/d/images/{a}").image_id == a


def test_verdict_json_uses_the_contract_field_names() -> None:
    v = VerdictMessage(
        image_id="i",
        site="s",
        device="d",
        verdict=Outcome.ERROR,
        reasons=[Reason.BUSY],
        focus=None,
        cervix=None,
        retry_after_ms=2000,
        backend="classical",
        models={},
        timings_ms={"total": 1.0},
        received_at="t0",
        decided_at="t1",
    )
    doc = json.loads(v.to_json())
    assert doc["schema"] == "colposcopy-gateway/verdict/1"
    assert doc["verdict"] == "error" and doc["reasons"] == ["busy"] and doc["retry_after_ms"] == 2000
    assert VerdictMessage.model_validate_json(v.to_json()) == v
    r = RecaptureMessage(
        image_id="i", site="s", device="d", reasons=[Reason.OUT_OF_FOCUS], guidance=["x"], expires_at="t"
    )
    assert json.loads(r.to_json())["schema"] == "colposcopy-gateway/recapture/1"
